import {
  basename,
  elapsed,
  errorText,
  formatAgo,
  formatDuration,
  formatMount,
  formatPin,
  formatSize,
  formatTime,
  formatWhere,
  isActive,
  isHttpUrl,
  MISSING,
  moreText,
  mountTitle,
  plural,
  recordMounts,
  recordPackages,
  recordTimings,
  recordWritten,
  serviceFacts,
  shortDigest,
  tailLog,
  toDate,
  truncate,
  writtenPath
} from '../src/format';

describe('formatDuration', () => {
  it.each([
    [0, '0.0s'],
    [12.34, '12.3s'],
    [60, '1m00s'],
    [245, '4m05s'],
    [3599, '59m59s'],
    [3600, '1h00m'],
    [7380, '2h03m'],
    [90_000, '25h00m']
  ])('%p seconds is %p', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });

  it.each([[-1], [NaN], [Infinity], [null], [undefined], ['12'], [{}]])(
    '%p is missing',
    value => {
      expect(formatDuration(value)).toBe(MISSING);
    }
  );
});

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [999, '999 B'],
    [1000, '1.0 kB'],
    [1536, '1.5 kB'],
    [512_300_000, '512.3 MB'],
    [1.5e9, '1.5 GB'],
    [2e12, '2.0 TB'],
    // Past the last unit it stays in TB.
    [5e15, '5000.0 TB']
  ])('%p bytes is %p', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });

  it.each([[-5], [NaN], [-Infinity], [null], [undefined], ['100']])(
    '%p is missing',
    value => {
      expect(formatSize(value)).toBe(MISSING);
    }
  );
});

describe('toDate', () => {
  it('reads epoch seconds and ISO strings', () => {
    expect(toDate(1_700_000_000)?.getTime()).toBe(1_700_000_000_000);
    expect(toDate('2024-01-02T03:04:05Z')?.toISOString()).toBe(
      '2024-01-02T03:04:05.000Z'
    );
  });

  it.each([[''], ['not a date'], [NaN], [null], [undefined], [{}]])(
    '%p is no date',
    value => {
      expect(toDate(value)).toBeNull();
    }
  );
});

describe('formatAgo', () => {
  const now = 1_700_000_000_000;
  const ago = (seconds: number) => now / 1000 - seconds;

  it.each([
    [0, 'just now'],
    [44, 'just now'],
    [45, '1 min ago'],
    [300, '5 min ago'],
    [3 * 3600, '3 h ago'],
    [2 * 86400, '2 d ago']
  ])('%p seconds ago is %p', (seconds, text) => {
    expect(formatAgo(ago(seconds), now)).toBe(text);
  });

  it('shows the date after a week', () => {
    const then = ago(10 * 86400);
    expect(formatAgo(then, now)).toBe(new Date(then * 1000).toLocaleDateString());
  });

  it('takes a time in the future (clock skew) as just now', () => {
    expect(formatAgo(ago(-600), now)).toBe('just now');
  });

  it('reads ISO strings too', () => {
    expect(formatAgo(new Date(now - 2 * 3600_000).toISOString(), now)).toBe('2 h ago');
  });

  it.each([[null], [undefined], ['yesterday'], [NaN]])('%p is missing', value => {
    expect(formatAgo(value, now)).toBe(MISSING);
  });
});

describe('formatTime', () => {
  it('is the local date and time', () => {
    expect(formatTime(1_700_000_000)).toBe(new Date(1_700_000_000_000).toLocaleString());
  });

  it('is missing without a time', () => {
    expect(formatTime(null)).toBe(MISSING);
    expect(formatTime('garbage')).toBe(MISSING);
  });
});

describe('basename', () => {
  it.each([
    ['/home/me/nb/train.ipynb', 'train.ipynb'],
    ['C:\\Users\\me\\train.ipynb', 'train.ipynb'],
    ['train.ipynb', 'train.ipynb'],
    // No last component: the path as it is.
    ['nb/', 'nb/']
  ])('%p is %p', (path, name) => {
    expect(basename(path)).toBe(name);
  });

  it('is missing without a path', () => {
    expect(basename(null)).toBe(MISSING);
    expect(basename(undefined)).toBe(MISSING);
    expect(basename('')).toBe(MISSING);
  });
});

describe('formatPin', () => {
  it.each([
    ['numpy==2.1.3', 'numpy==2.1.3'],
    [{ name: 'numpy', version: '2.1.3' }, 'numpy==2.1.3'],
    [{ name: 'local-pkg' }, 'local-pkg'],
    [{ version: '1.0' }, '{"version":"1.0"}'],
    [42, '42'],
    [null, 'null']
  ])('%p is %p', (entry, text) => {
    expect(formatPin(entry)).toBe(text);
  });
});

describe('formatWhere', () => {
  it('takes a record without a backend as docker', () => {
    expect(formatWhere({})).toBe('docker');
    expect(formatWhere({ backend: null, target: null })).toBe('docker');
    expect(formatWhere({ backend: '' })).toBe('docker');
  });

  it('names the backend and the target in order', () => {
    expect(
      formatWhere({
        backend: 'kubernetes',
        target: { context: 'kind-dev', namespace: 'ml' }
      })
    ).toBe('kubernetes (context kind-dev, namespace ml)');
    expect(
      formatWhere({
        backend: 'docker',
        target: { engine: 'unix:///var/run/docker.sock' }
      })
    ).toBe('docker (engine unix:///var/run/docker.sock)');
    expect(formatWhere({ target: { engine: 'tcp://127.0.0.1:2375' } })).toBe(
      'docker (engine tcp://127.0.0.1:2375)'
    );
  });

  it('leaves out an empty or malformed target', () => {
    expect(formatWhere({ backend: 'kubernetes' })).toBe('kubernetes');
    expect(formatWhere({ backend: 'kubernetes', target: {} })).toBe('kubernetes');
    expect(formatWhere({ backend: 'kubernetes', target: ['ml'] })).toBe('kubernetes');
    expect(formatWhere({ backend: 'kubernetes', target: 'kind-dev' })).toBe('kubernetes');
    expect(
      formatWhere({
        backend: 'kubernetes',
        target: { context: '', namespace: null, pod: 'p' }
      })
    ).toBe('kubernetes (pod p)');
  });

  it('takes a backend that is not a string as docker, and no record as missing', () => {
    expect(formatWhere({ backend: 42 })).toBe('docker');
    expect(formatWhere(null)).toBe(MISSING);
    expect(formatWhere(undefined)).toBe(MISSING);
  });
});

describe('recordPackages', () => {
  const lock = [
    { name: 'numpy', version: '2.1.3' },
    { name: 'pandas', version: '2.2.0' }
  ];

  it('prefers the lock, then what was captured, then the requirements', () => {
    expect(recordPackages({ lock, captured: ['x==1'], requirements: ['numpy'] })).toEqual(
      ['numpy==2.1.3', 'pandas==2.2.0']
    );
    expect(recordPackages({ lock: [], captured: ['x==1'], requirements: ['y'] })).toEqual(
      ['x==1']
    );
    expect(recordPackages({ lock: null, captured: [], requirements: ['numpy'] })).toEqual(
      ['numpy']
    );
  });

  it('is empty when nothing was recorded', () => {
    expect(recordPackages({})).toEqual([]);
    expect(recordPackages({ requirements: 'numpy' })).toEqual([]);
  });
});

describe('recordTimings', () => {
  it('lists phases in recorded order', () => {
    expect(recordTimings({ timings: { build: 30.4, run: 2 } })).toEqual([
      ['build', 30.4],
      ['run', 2]
    ]);
  });

  it('is empty without timings', () => {
    expect(recordTimings({})).toEqual([]);
    expect(recordTimings({ timings: null })).toEqual([]);
    expect(recordTimings({ timings: 'fast' })).toEqual([]);
  });
});

describe('tailLog', () => {
  const log = ['a', 'b', 'c', 'd'].join('\n');

  it('keeps the last lines of a long log', () => {
    expect(tailLog(log, 2)).toEqual({ text: 'c\nd', lines: 4, clipped: true });
  });

  it('shows all of it on demand or when it is short', () => {
    expect(tailLog(log, 2, true)).toEqual({ text: log, lines: 4, clipped: false });
    expect(tailLog(log, 4)).toEqual({ text: log, lines: 4, clipped: false });
    expect(tailLog('', 200)).toEqual({ text: '', lines: 1, clipped: false });
  });
});

describe('small helpers', () => {
  it('errorText gives the message of an error, or the thing as a string', () => {
    expect(errorText(new Error('boom'))).toBe('boom');
    expect(errorText('plain')).toBe('plain');
    expect(errorText(404)).toBe('404');
  });

  it('isActive is true for runs that have not ended', () => {
    expect(isActive('running')).toBe(true);
    expect(isActive('building')).toBe(true);
    expect(isActive('serving')).toBe(true);
    expect(isActive('done')).toBe(false);
    expect(isActive('RUNNING')).toBe(false);
    expect(isActive(null)).toBe(false);
  });

  it('elapsed counts seconds since a start in epoch seconds', () => {
    expect(elapsed(1_700_000_000, 1_700_000_090_000)).toBe(90);
    expect(elapsed(null, 1_700_000_090_000)).toBeNull();
    expect(elapsed('1700000000', 1_700_000_090_000)).toBeNull();
  });
});

describe('mounts and written files', () => {
  const DATA = {
    source: '/home/me/data',
    target: '/work/data',
    mode: 'ro',
    digest: 'sha256:0123456789abcdef0123',
    count: 3,
    size: 1_234_567
  };

  it('shortens a digest to 12 hex digits after its algorithm', () => {
    expect(shortDigest('sha256:0123456789abcdef0123')).toBe('0123456789ab');
    expect(shortDigest('0123456789abcdef')).toBe('0123456789ab');
    expect(shortDigest(undefined)).toBe(MISSING);
    expect(shortDigest('')).toBe(MISSING);
  });

  it('shows a mount as target, mode, size and files', () => {
    expect(formatMount(DATA)).toBe('/work/data (ro, 1.2 MB, 3 files)');
    expect(formatMount({ ...DATA, mode: 'rw', count: 1, size: 12 })).toBe(
      '/work/data (rw, 12 B, 1 file)'
    );
    expect(formatMount({ target: '/x' })).toBe(`/x (${MISSING}, ${MISSING}, ${MISSING})`);
  });

  it('titles a mount with its source and short digest', () => {
    expect(mountTitle(DATA)).toBe('from /home/me/data, digest 0123456789ab');
    expect(mountTitle({ target: '/x' })).toBe(`from ${MISSING}, digest ${MISSING}`);
  });

  it('keeps the mounts that name a target; none in older records', () => {
    expect(recordMounts({ mounts: [DATA, null, { source: '/a' }, 'x'] })).toEqual([DATA]);
    expect(recordMounts({})).toEqual([]);
    expect(recordMounts({ mounts: null })).toEqual([]);
  });

  it('joins a written path to its mount with one slash', () => {
    expect(writtenPath('/work/out', 'model.pt')).toBe('/work/out/model.pt');
    expect(writtenPath('/work/out/', '/a/b.csv')).toBe('/work/out/a/b.csv');
    expect(writtenPath('/work/out.csv', '')).toBe('/work/out.csv');
  });

  it('lists written files with their sizes, in recorded order', () => {
    const written = {
      '/work/out': { 'model.pt': [2_500_000, 'sha256:aa'], 'log.txt': [10, 'sha256:bb'] },
      '/work/more': { 'x.csv': [1000, 'sha256:cc'] }
    };
    expect(recordWritten({ written })).toEqual([
      '/work/out/model.pt (2.5 MB)',
      '/work/out/log.txt (10 B)',
      '/work/more/x.csv (1.0 kB)'
    ]);
    expect(recordWritten({})).toEqual([]);
    expect(recordWritten({ written: {} })).toEqual([]);
    expect(recordWritten({ written: { '/w': null, '/v': { a: 'bad' } } })).toEqual([
      `/v/a (${MISSING})`
    ]);
  });

  it('truncates a list and says how many it left off', () => {
    expect(truncate([1, 2, 3], 2)).toEqual({ shown: [1, 2], more: 1 });
    expect(truncate([1, 2], 20)).toEqual({ shown: [1, 2], more: 0 });
    expect(moreText(5)).toBe('and 5 more');
    expect(moreText(0)).toBe('');
  });
});

describe('services', () => {
  it('counts in words', () => {
    expect(plural(0, 'request')).toBe('0 requests');
    expect(plural(1, 'request')).toBe('1 request');
    expect(plural(8, 'error')).toBe('8 errors');
  });

  it("says what a service's server said: call, requests, errors if any, uptime", () => {
    const service = {
      entry: 'predict',
      signature: 'predict(x)',
      requests: 1,
      uptime: 62
    };
    expect(serviceFacts(service)).toEqual(['predict(x)', '1 request', 'up 1m02s']);
    expect(serviceFacts({ ...service, errors: 2 })).toEqual([
      'predict(x)',
      '1 request',
      '2 errors',
      'up 1m02s'
    ]);
  });

  it('says where a service runs and its replicas when not one docker container', () => {
    expect(serviceFacts({ backend: 'docker', replicas: 1, entry: 'predict' })).toEqual([
      'predict'
    ]);
    expect(
      serviceFacts({ backend: 'kubernetes', replicas: 3, entry: 'predict' })
    ).toEqual(['kubernetes', '3 replicas', 'predict']);
  });

  it('links only http and https URLs', () => {
    expect(isHttpUrl('http://127.0.0.1:8123')).toBe(true);
    expect(isHttpUrl('HTTPS://svc.example/x')).toBe(true);
    for (const bad of ['javascript:alert(1)', 'http://', 'ftp://h/x', '', null, 3]) {
      expect(isHttpUrl(bad)).toBe(false);
    }
  });

  it('says only what it knows of a service that does not answer', () => {
    expect(
      serviceFacts({ entry: 'ocr', signature: null, requests: null, uptime: null })
    ).toEqual(['ocr']);
    expect(serviceFacts({})).toEqual([]);
    expect(serviceFacts({ requests: '8', uptime: 'long', errors: NaN })).toEqual([]);
  });
});

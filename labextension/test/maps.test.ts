import {
  errorLines,
  failedItemTitle,
  IMapItem,
  itemCounts,
  itemFacts,
  itemTone,
  mapItems,
  mapSummaryText,
  runningMapText
} from '../src/maps';

const item = (over: Partial<IMapItem> = {}): IMapItem => ({
  index: 0,
  reason: 'done',
  exitCode: 0,
  attempts: 1,
  duration: 1.5,
  error: null,
  ...over
});

describe('mapSummaryText', () => {
  it('says a map, its items and how many failed', () => {
    expect(mapSummaryText({ name: 'xs', count: 12, failed: 1, parallel: 4 })).toBe(
      'map · 12 items · 1 failed'
    );
    expect(mapSummaryText({ name: 'xs', count: 1, failed: 0, parallel: null })).toBe(
      'map · 1 item'
    );
  });

  it('names the variable while its items run (no count yet)', () => {
    expect(
      mapSummaryText({ name: 'shards', count: null, failed: null, parallel: 4 })
    ).toBe('map over shards');
    expect(
      mapSummaryText({ name: null, count: null, failed: null, parallel: null })
    ).toBe('map');
  });

  it('is empty for a run that is no map', () => {
    expect(mapSummaryText(null)).toBe('');
    expect(mapSummaryText(undefined)).toBe('');
  });
});

describe('mapItems', () => {
  it('reads the items in index order, with defaults for missing fields', () => {
    const record = {
      map: {
        items: [
          {
            index: 2,
            reason: 'failed',
            exit_code: 1,
            attempts: 3,
            duration: 2,
            error: 'E'
          },
          { index: 0, reason: 'done', exit_code: 0, attempts: 1, duration: 1.25 },
          { index: 1 }
        ]
      }
    };
    expect(mapItems(record)).toEqual([
      item({ index: 0, duration: 1.25 }),
      item({ index: 1, reason: 'unknown', exitCode: null, duration: null }),
      item({
        index: 2,
        reason: 'failed',
        exitCode: 1,
        attempts: 3,
        duration: 2,
        error: 'E'
      })
    ]);
  });

  it('leaves out damaged entries, and has none without a map block', () => {
    expect(
      mapItems({ map: { items: [null, 'x', { reason: 'done' }, { index: 4 }] } })
    ).toEqual([item({ index: 4, reason: 'unknown', exitCode: null, duration: null })]);
    expect(mapItems({})).toEqual([]);
    expect(mapItems({ map: null })).toEqual([]);
    expect(mapItems({ map: { items: 'no' } })).toEqual([]);
  });
});

describe('an item', () => {
  it.each([
    ['done', 'ok'],
    ['failed', 'bad'],
    ['timeout', 'bad'],
    ['oom', 'bad'],
    ['stopped', 'off'],
    ['killed', 'off'],
    ['unknown', 'off']
  ])('%p is coloured %p', (reason, tone) => {
    expect(itemTone(reason)).toBe(tone);
  });

  it('shows its duration, and its attempts when it was retried', () => {
    expect(itemFacts(item())).toBe('1.5s');
    expect(itemFacts(item({ attempts: 2 }))).toBe('1.5s · 2 attempts');
    expect(itemFacts(item({ duration: null }))).toBe('–');
    expect(itemFacts(item({ attempts: 3 }), true)).toBe('1.5s ×3');
    expect(itemFacts(item(), true)).toBe('1.5s');
  });

  it('that failed says its index, how, its exit code and attempts', () => {
    expect(
      failedItemTitle(
        item({ index: 7, reason: 'failed', exitCode: 1, attempts: 2, duration: 2.6 })
      )
    ).toBe('item 7 · failed · exit 1 · 2.6s · 2 attempts');
    expect(failedItemTitle(item({ index: 3, reason: 'timeout', exitCode: null }))).toBe(
      'item 3 · timeout · 1.5s'
    );
  });

  it('counts the items by how they ended, done first', () => {
    const items = [
      item(),
      item({ reason: 'timeout' }),
      item({ reason: 'failed' }),
      item(),
      item({ reason: 'failed' })
    ];
    expect(itemCounts(items)).toBe('2 done, 2 failed, 1 timeout');
    expect(itemCounts([])).toBe('');
  });
});

describe('errorLines', () => {
  it("gives a traceback's last line, the error, and all its lines", () => {
    const tb =
      'exit code 1\nTraceback (most recent call last):\n  File "cell.py"\nKeyError: 1\n\n';
    expect(errorLines(tb)).toEqual({
      last: 'KeyError: 1',
      lines: [
        'exit code 1',
        'Traceback (most recent call last):',
        '  File "cell.py"',
        'KeyError: 1'
      ]
    });
  });

  it('is empty without an error', () => {
    expect(errorLines(null).last).toBe('');
    expect(errorLines('').last).toBe('');
  });
});

describe('runningMapText', () => {
  it('says how many of its items run now', () => {
    expect(runningMapText(4)).toBe('map · 4 items running');
    expect(runningMapText(1)).toBe('map · 1 item running');
    expect(runningMapText(null)).toBe('');
  });
});

import * as React from 'react';

import { ILogs } from '../api';
import { tailLog } from '../format';

/** Lines of a log shown before "Show all". */
export const LOG_TAIL = 200;

/** The run's output: its last lines, all of them on demand. */
export function LogView({ logs }: { logs: ILogs | null }): JSX.Element {
  const [full, setFull] = React.useState(false);
  const log = tailLog(logs?.logs ?? '', LOG_TAIL, full);
  return (
    <>
      <h4 className="mlc-SubTitle">Logs</h4>
      {logs === null ? (
        <div className="mlc-Hint">Loading…</div>
      ) : log.text ? (
        <>
          {log.clipped && (
            <button className="mlc-Link" onClick={() => setFull(true)}>
              Show all {log.lines} lines
            </button>
          )}
          <pre className="mlc-Log">{log.text}</pre>
        </>
      ) : (
        <div className="mlc-Hint">No output.</div>
      )}
    </>
  );
}

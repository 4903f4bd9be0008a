import * as React from 'react';

import { formatMount, IMountLine, mountTitle, moreText, truncate } from '../format';

/** Written files shown before "and N more". */
export const MAX_WRITTEN = 20;

/** The data the cell saw, one line per mount; nothing when it had none. */
export function DataIn({ mounts }: { mounts: IMountLine[] }): JSX.Element | null {
  if (mounts.length === 0) {
    return null;
  }
  return (
    <div className="mlc-DataIn">
      <h4 className="mlc-SubTitle">Data in</h4>
      <ul className="mlc-DataList">
        {mounts.map((m, i) => (
          <li
            key={`${String(m.target)}-${i}`}
            className="mlc-DataItem mlc-Mono"
            title={mountTitle(m)}
          >
            {formatMount(m)}
          </li>
        ))}
      </ul>
    </div>
  );
}

/** The files the cell wrote in writable mounts, the first few; nothing when none. */
export function DataOut({ files }: { files: string[] }): JSX.Element | null {
  if (files.length === 0) {
    return null;
  }
  const { shown, more } = truncate(files, MAX_WRITTEN);
  return (
    <div className="mlc-DataOut">
      <h4 className="mlc-SubTitle">Data out</h4>
      <ul className="mlc-DataList">
        {shown.map((f, i) => (
          <li key={`${f}-${i}`} className="mlc-DataItem mlc-Mono">
            {f}
          </li>
        ))}
      </ul>
      {more > 0 && <div className="mlc-Hint">{moreText(more)}</div>}
    </div>
  );
}

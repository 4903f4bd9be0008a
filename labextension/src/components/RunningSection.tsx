import * as React from 'react';

import { RunningRow } from './RunningRow';
import { ISidebarProps } from './types';

/** The containers running cells now; hidden while the engine is down. */
export function RunningSection({ model, app }: ISidebarProps): JSX.Element | null {
  if (model.problem?.kind === 'engine-down') {
    return null;
  }
  const running = model.runningCells;
  return (
    <section className="mlc-Section" aria-label="Running">
      <h3 className="mlc-SectionTitle">
        Running <span className="mlc-Count">{running.length}</span>
      </h3>
      {model.runningError && (
        <div className="mlc-Hint mlc-bad-text">{model.runningError}</div>
      )}
      {running.length === 0 ? (
        <div className="mlc-Hint">Nothing is running.</div>
      ) : (
        <ul className="mlc-List">
          {running.map(r => (
            <RunningRow key={`${r.id}-${r.container}`} run={r} model={model} app={app} />
          ))}
        </ul>
      )}
    </section>
  );
}

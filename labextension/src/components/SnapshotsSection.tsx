import * as React from 'react';

import { SnapshotRow } from './SnapshotRow';
import { ISidebarProps } from './types';

/** Past runs, newest first, a page at a time. */
export function SnapshotsSection({ model, app }: ISidebarProps): JSX.Element {
  const more = model.total - model.snapshots.length;
  return (
    <section className="mlc-Section" aria-label="Snapshots">
      <h3 className="mlc-SectionTitle">
        Snapshots <span className="mlc-Count">{model.total}</span>
      </h3>
      {model.snapshots.length === 0 && !model.loading ? (
        <div className="mlc-Hint">No snapshots yet.</div>
      ) : (
        <ul className="mlc-List">
          {model.snapshots.map(s => (
            <SnapshotRow key={s.id} snapshot={s} model={model} app={app} />
          ))}
        </ul>
      )}
      {more > 0 && (
        <button className="mlc-Button mlc-More" onClick={() => void model.loadMore()}>
          Show more ({more} older)
        </button>
      )}
    </section>
  );
}

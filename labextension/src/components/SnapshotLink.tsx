import * as React from 'react';

import { SidebarModel } from '../model';

/** A snapshot id that opens that snapshot in the list below. */
export function SnapshotLink({
  model,
  id
}: {
  model: SidebarModel;
  id: string;
}): JSX.Element {
  return (
    <button
      className="mlc-Link mlc-Mono mlc-SnapshotLink"
      title={`Show snapshot ${id}`}
      onClick={() => void model.showSnapshot(id)}
    >
      {id}
    </button>
  );
}

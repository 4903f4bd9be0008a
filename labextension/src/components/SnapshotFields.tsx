import * as React from 'react';

import { ISnapshotRecord } from '../api';
import { formatDuration, formatSize, formatTime, formatWhere, MISSING } from '../format';

/** The record's main fields, one labelled line each. */
export function SnapshotFields({
  id,
  record: r,
  where
}: {
  id: string;
  record: ISnapshotRecord;
  /** Whose backend and target to show under "Ran on" (null: not known yet). */
  where: ISnapshotRecord | null;
}): JSX.Element {
  return (
    <dl className="mlc-Fields">
      <dt>Id</dt>
      <dd className="mlc-Mono">{id}</dd>
      <dt>Status</dt>
      <dd>
        {r.status || MISSING}
        {typeof r.exit_code === 'number' ? ` (exit ${r.exit_code})` : ''}
        {r.reason ? ` – ${r.reason}` : ''}
      </dd>
      <dt>Notebook</dt>
      <dd title={r.notebook || ''}>{r.notebook || MISSING}</dd>
      <dt>Started</dt>
      <dd>{formatTime(r.created)}</dd>
      <dt>Duration</dt>
      <dd>{formatDuration(r.duration)}</dd>
      <dt>Ran on</dt>
      <dd className="mlc-RanOn">{formatWhere(where)}</dd>
      <dt>Image</dt>
      <dd className="mlc-Mono" title={r.env_image || ''}>
        {r.env_image || MISSING} ({formatSize(r.image_size)})
      </dd>
      {r.base_image && (
        <>
          <dt>Base</dt>
          <dd className="mlc-Mono">{r.base_image}</dd>
        </>
      )}
    </dl>
  );
}

import * as React from 'react';

import { IRunning } from '../api';
import { basename, MISSING } from '../format';
import { runningMapText } from '../maps';
import { SnapshotLink } from './SnapshotLink';
import { StatusBadge } from './StatusBadge';
import { StopButton } from './StopButton';
import { ISidebarProps } from './types';

/** One running container, with its Stop button. */
export function RunningRow({
  run,
  model
}: ISidebarProps & { run: IRunning }): JSX.Element {
  return (
    <li className="mlc-Row mlc-RunningRow" data-snapshot={run.id}>
      <div className="mlc-RowMain">
        <span className="mlc-Pulse" aria-hidden="true" />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name">{run.name || run.id}</span>
            <StatusBadge status={run.state} />
          </div>
          <div className="mlc-RowMeta">
            {run.notebook ? basename(run.notebook) + ' · ' : ''}
            {typeof run.items === 'number' ? runningMapText(run.items) + ' · ' : ''}
            {run.status || MISSING} · {run.container}
            {run.snapshot_status && (
              <>
                {' · snapshot '}
                <SnapshotLink model={model} id={run.id} />
              </>
            )}
          </div>
        </div>
        <StopButton
          model={model}
          id={run.id}
          label={run.name || run.id}
          title={`Stop container ${run.container}`}
        />
      </div>
    </li>
  );
}

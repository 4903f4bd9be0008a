import { Notification } from '@jupyterlab/apputils';
import * as React from 'react';

import { IRunning } from '../api';
import { basename, errorText, MISSING } from '../format';
import { StatusBadge } from './StatusBadge';
import { ISidebarProps } from './types';

/** One running container, with its Stop button. */
export function RunningRow({
  run,
  model
}: ISidebarProps & { run: IRunning }): JSX.Element {
  const stopping = model.stopping.has(run.id);
  const label = run.name || run.id;
  const stop = async () => {
    try {
      await model.stopRun(run.id);
      Notification.success(`Stopped ${label}.`, { autoClose: 3000 });
    } catch (e) {
      Notification.error(`Could not stop ${label}: ${errorText(e)}`);
    }
  };
  return (
    <li className="mlc-Row mlc-RunningRow" data-snapshot={run.id}>
      <div className="mlc-RowMain">
        <span className="mlc-Pulse" aria-hidden="true" />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name">{label}</span>
            <StatusBadge status={run.state} />
          </div>
          <div className="mlc-RowMeta">
            {run.notebook ? basename(run.notebook) + ' · ' : ''}
            {run.status || MISSING} · {run.container}
          </div>
        </div>
        <button
          className="mlc-Button mlc-Button-warn"
          disabled={stopping}
          onClick={() => void stop()}
          title={`Stop container ${run.container}`}
        >
          {stopping ? 'Stopping…' : 'Stop'}
        </button>
      </div>
    </li>
  );
}

import { Notification } from '@jupyterlab/apputils';
import * as React from 'react';

import { errorText } from '../format';
import { SidebarModel } from '../model';

/** Stop a run or a service by its snapshot id, and say how it went. */
export function StopButton({
  model,
  id,
  label,
  title
}: {
  model: SidebarModel;
  /** The snapshot id. */
  id: string;
  /** What the notifications call it: its name, else its id. */
  label: string;
  title: string;
}): JSX.Element {
  const stopping = model.stopping.has(id);
  const stop = async () => {
    try {
      await model.stopRun(id);
      Notification.success(`Stopped ${label}.`, { autoClose: 3000 });
    } catch (e) {
      Notification.error(`Could not stop ${label}: ${errorText(e)}`);
    }
  };
  return (
    <button
      className="mlc-Button mlc-Button-warn"
      disabled={stopping}
      onClick={() => void stop()}
      title={title}
    >
      {stopping ? 'Stopping…' : 'Stop'}
    </button>
  );
}

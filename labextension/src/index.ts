import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';

import { api } from './api';
import { containerIcon } from './icon';
import { MlcSidebar } from './panel';

const COMMAND = 'mlcontainer:open-sidebar';

/** The left-sidebar panel listing running containerized cells and past snapshots. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlcontainer-magics:sidebar',
  description: 'Running containerized cells and past snapshots of mlcontainer-magics.',
  autoStart: true,
  optional: [ILabShell, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const sidebar = new MlcSidebar(app);
    app.shell.add(sidebar, 'left', { rank: 750 });
    if (restorer) {
      restorer.add(sidebar, sidebar.id);
    }
    app.commands.addCommand(COMMAND, {
      label: 'Show Containerized Runs',
      icon: containerIcon,
      execute: () => app.shell.activateById(sidebar.id)
    });
    if (palette) {
      palette.addItem({ command: COMMAND, category: 'mlcontainer' });
    }
    document.addEventListener('click', stopFromStatusDisplay);
  }
};

/**
 * The Stop button in a cell's status display (classes mlc-stop-run mlc-run-<snapshot id>).
 * The kernel is busy running that very cell and would hear the widget's own click only
 * afterwards, so the click also goes to the server, which stops the run now.
 */
function stopFromStatusDisplay(event: MouseEvent): void {
  const button = (event.target as HTMLElement | null)?.closest?.('button.mlc-stop-run');
  const id = Array.from(button?.classList ?? [])
    .find(c => c.startsWith('mlc-run-'))
    ?.slice('mlc-run-'.length);
  if (!button || !id) {
    return;
  }
  event.preventDefault();
  (button as HTMLButtonElement).disabled = true;
  button.textContent = 'Stopping…';
  api.stop(id).catch(e => {
    (button as HTMLButtonElement).disabled = false;
    button.textContent = 'Stop';
    Notification.error(`Could not stop ${id}: ${e?.message ?? e}`);
  });
}

export default plugin;

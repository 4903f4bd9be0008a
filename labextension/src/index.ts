import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';

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
  }
};

export default plugin;

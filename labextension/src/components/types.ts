import { JupyterFrontEnd } from '@jupyterlab/application';

import { SidebarModel } from '../model';

/** What most of the sidebar's parts are given: the model, and the app to open files. */
export interface ISidebarProps {
  model: SidebarModel;
  app: JupyterFrontEnd;
}

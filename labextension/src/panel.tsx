import { JupyterFrontEnd } from '@jupyterlab/application';
import { ReactWidget, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { EmptyState } from './components/EmptyState';
import { ProblemBanner } from './components/ProblemBanner';
import { RunningSection } from './components/RunningSection';
import { ServicesSection } from './components/ServicesSection';
import { SnapshotsSection } from './components/SnapshotsSection';
import { ISidebarProps } from './components/types';
import { containerIcon } from './icon';
import { SidebarModel } from './model';

/** The sidebar widget: polls while visible, stops when hidden. */
export class MlcSidebar extends ReactWidget {
  constructor(
    readonly app: JupyterFrontEnd,
    readonly model: SidebarModel = new SidebarModel()
  ) {
    super();
    this.id = 'mlcontainer-magics-sidebar';
    this.addClass('mlc-Sidebar');
    this.title.icon = containerIcon;
    this.title.caption = 'Containerized runs (mlcontainer)';
    this.model.changed.connect(() => this.update(), this);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.start();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.stop();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.start();
    }
  }

  protected onBeforeDetach(msg: Message): void {
    this.model.stop();
    super.onBeforeDetach(msg);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.dispose();
    super.dispose();
  }

  render(): JSX.Element {
    return <Sidebar model={this.model} app={this.app} />;
  }
}

/** The whole panel: header, what is wrong if anything, then running runs, services and
 * snapshots. */
export function Sidebar({ model, app }: ISidebarProps): JSX.Element {
  const problem = model.problem;
  // A new user: nothing to list (an engine that is down does not change that).
  const empty =
    !model.loading &&
    (!problem || problem.kind === 'engine-down') &&
    model.total === 0 &&
    model.running.length === 0 &&
    model.services.length === 0;
  return (
    <div className="mlc-Panel">
      <header className="mlc-Header">
        <h2 className="mlc-Title">Containerized runs</h2>
        <button
          className="mlc-IconButton"
          title="Refresh"
          aria-label="Refresh"
          onClick={() => void model.refresh()}
        >
          <refreshIcon.react tag="span" />
        </button>
      </header>
      {problem && <ProblemBanner problem={problem} />}
      {problem?.kind !== 'no-extension' && (
        <>
          {model.loading && <div className="mlc-Hint">Loading…</div>}
          {empty ? (
            <EmptyState />
          ) : (
            <>
              <RunningSection model={model} app={app} />
              <ServicesSection model={model} app={app} />
              <SnapshotsSection model={model} app={app} />
            </>
          )}
        </>
      )}
    </div>
  );
}

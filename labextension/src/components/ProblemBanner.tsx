import * as React from 'react';

import { Problem } from '../model';

/** What stands between the user and the sidebar, with what to do about it. */
export function ProblemBanner({
  problem
}: {
  problem: Problem | null;
}): JSX.Element | null {
  if (!problem) {
    return null;
  }
  if (problem.kind === 'no-extension') {
    return <NoExtensionBanner />;
  }
  if (problem.kind === 'engine-down') {
    return <EngineDownBanner message={problem.message} />;
  }
  return <ErrorBanner message={problem.message} />;
}

function NoExtensionBanner(): JSX.Element {
  return (
    <div className="mlc-Banner mlc-Banner-error" role="alert">
      <strong>Server extension not installed.</strong>
      <p>
        JupyterLab answers 404 for <code>/mlcontainer/</code>: the mlcontainer-magics
        server extension is not installed or not enabled in the Python environment running
        JupyterLab. Install it there (<code>pip install mlcontainer-magics</code>), check{' '}
        <code>jupyter server extension list</code>, and restart JupyterLab.
      </p>
    </div>
  );
}

function EngineDownBanner({ message }: { message: string }): JSX.Element {
  return (
    <div className="mlc-Banner mlc-Banner-warn" role="alert">
      <strong>
        Docker engine is down: run <code>mlcontainer doctor --fix</code>
      </strong>
      <p>Past snapshots are still listed; running and new runs need the engine.</p>
      {message && (
        <details>
          <summary>Details</summary>
          <p className="mlc-Small">{message}</p>
        </details>
      )}
    </div>
  );
}

function ErrorBanner({ message }: { message: string }): JSX.Element {
  return (
    <div className="mlc-Banner mlc-Banner-error" role="alert">
      <strong>Cannot read snapshots.</strong>
      <p className="mlc-Small">{message}</p>
    </div>
  );
}

import * as React from 'react';

import { containerIcon } from '../icon';

/** A new user: nothing to list yet, so how to start. */
export function EmptyState(): JSX.Element {
  return (
    <div className="mlc-Empty">
      <containerIcon.react tag="div" className="mlc-EmptyIcon" />
      <h3>No containerized runs yet</h3>
      <p>Run a notebook cell in its own Docker container:</p>
      <ol>
        <li>
          Load the magics once per notebook:
          <pre>%load_ext mlcontainer_magics</pre>
        </li>
        <li>
          Start a cell with <code>%%containerize</code>:
          <pre>
            {'%%containerize --name hello\nimport sys\nprint("hello from", sys.version)'}
          </pre>
        </li>
      </ol>
      <p>
        Every run is kept as a snapshot and shows up here, with its packages, timings and
        logs.
      </p>
    </div>
  );
}

import * as React from 'react';

import { formatDuration } from '../format';

/** How long each phase of the run took; nothing when none was recorded. */
export function TimingsList({
  timings
}: {
  timings: [string, unknown][];
}): JSX.Element | null {
  if (timings.length === 0) {
    return null;
  }
  return (
    <>
      <h4 className="mlc-SubTitle">Timings</h4>
      <dl className="mlc-Fields">
        {timings.map(([phase, secs]) => (
          <React.Fragment key={phase}>
            <dt>{phase}</dt>
            <dd>{formatDuration(secs)}</dd>
          </React.Fragment>
        ))}
      </dl>
    </>
  );
}

import * as React from 'react';

/** The run's packages, pinned where the lock has them. */
export function PackageList({ packages }: { packages: string[] }): JSX.Element {
  return (
    <>
      <h4 className="mlc-SubTitle">Packages ({packages.length})</h4>
      {packages.length ? (
        <ul className="mlc-Packages">
          {packages.map(p => (
            <li key={p} className="mlc-Pkg mlc-Mono">
              {p}
            </li>
          ))}
        </ul>
      ) : (
        <div className="mlc-Hint">None recorded.</div>
      )}
    </>
  );
}

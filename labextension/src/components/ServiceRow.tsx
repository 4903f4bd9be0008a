import * as React from 'react';

import { IService } from '../api';
import { isHttpUrl, MISSING, serviceFacts } from '../format';
import { SnapshotLink } from './SnapshotLink';
import { StatusBadge } from './StatusBadge';
import { StopButton } from './StopButton';
import { ISidebarProps } from './types';

/** One service: its name, URL, snapshot, what its server says, and its Stop button. */
export function ServiceRow({
  service: s,
  model
}: ISidebarProps & { service: IService }): JSX.Element {
  const label = s.name || s.id;
  const light = s.answering
    ? 'mlc-Dot-ok'
    : s.stop_requested
      ? 'mlc-Dot-off'
      : 'mlc-Dot-bad';
  return (
    <li
      className={`mlc-Row mlc-ServiceRow ${s.answering ? '' : 'mlc-not-answering'}`}
      data-snapshot={s.id}
      data-service={s.name ?? ''}
    >
      <div className="mlc-RowMain mlc-ServiceMain">
        <span className={`mlc-Dot ${light}`} aria-hidden="true" />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name">{label}</span>
            <ServiceBadge service={s} />
            <span className="mlc-Spacer" />
            <StopButton
              model={model}
              id={s.id}
              label={label}
              title={`Stop service ${label} (snapshot ${s.id})`}
            />
          </div>
          <div className="mlc-RowMeta mlc-Wrap">
            {isHttpUrl(s.url) ? (
              <a
                className="mlc-Url"
                href={s.url}
                target="_blank"
                rel="noopener noreferrer"
                title={`Open ${s.url}: POST /${s.entry || 'predict'} calls it`}
              >
                {s.url}
              </a>
            ) : (
              s.url || MISSING
            )}
          </div>
          <div className="mlc-RowMeta mlc-Wrap">
            <span className="mlc-Fact">
              {'snapshot '}
              <SnapshotLink model={model} id={s.id} />
            </span>
            {serviceFacts(s).map(fact => (
              <React.Fragment key={fact}>
                {' · '}
                <span className="mlc-Fact">{fact}</span>
              </React.Fragment>
            ))}
          </div>
          {!s.answering && !s.stop_requested && s.message && (
            <div className="mlc-RowMeta mlc-Wrap mlc-bad-text">{s.message}</div>
          )}
        </div>
      </div>
    </li>
  );
}

/** `serving` while it answers; `stopping` once a stop was asked for; else `not answering`. */
function ServiceBadge({ service: s }: { service: IService }): JSX.Element {
  if (s.stop_requested) {
    return (
      <span className="mlc-Badge mlc-muted" title={s.message || ''}>
        stopping
      </span>
    );
  }
  if (!s.answering) {
    return (
      <span className="mlc-Badge mlc-bad" title={s.message || ''}>
        not answering
      </span>
    );
  }
  return <StatusBadge status={s.status} />;
}

import * as React from 'react';

import { IService } from '../api';
import { MISSING, serviceFacts } from '../format';
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
  const facts = serviceFacts(s);
  return (
    <li
      className={`mlc-Row mlc-ServiceRow ${s.answering ? '' : 'mlc-not-answering'}`}
      data-snapshot={s.id}
      data-service={s.name ?? ''}
    >
      <div className="mlc-RowMain">
        <span
          className={`mlc-Dot ${s.answering ? 'mlc-Dot-ok' : 'mlc-Dot-bad'}`}
          aria-hidden="true"
        />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name">{label}</span>
            {s.answering ? (
              <StatusBadge status={s.status} />
            ) : (
              <span className="mlc-Badge mlc-bad" title={s.message || ''}>
                not answering
              </span>
            )}
          </div>
          <div className="mlc-RowMeta">
            {s.url ? (
              <a
                className="mlc-Url mlc-Mono"
                href={s.url}
                target="_blank"
                rel="noopener noreferrer"
                title={`Open ${s.url}: POST /${s.entry || 'predict'} calls it`}
              >
                {s.url}
              </a>
            ) : (
              MISSING
            )}
          </div>
          <div className="mlc-RowMeta">
            {'snapshot '}
            <SnapshotLink model={model} id={s.id} />
            {facts && ` · ${facts}`}
          </div>
          {!s.answering && s.message && (
            <div className="mlc-RowMeta mlc-bad-text" title={s.message}>
              {s.message}
            </div>
          )}
        </div>
        <StopButton
          model={model}
          id={s.id}
          label={label}
          title={`Stop service ${label} (snapshot ${s.id})`}
        />
      </div>
    </li>
  );
}

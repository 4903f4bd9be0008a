import * as React from 'react';

/** The badge colour of each status; any other status is muted. */
export const STATUS_CLASS: Record<string, string> = {
  done: 'mlc-ok',
  running: 'mlc-active',
  building: 'mlc-active',
  serving: 'mlc-serving',
  failed: 'mlc-bad',
  oom: 'mlc-bad',
  timeout: 'mlc-bad',
  stopped: 'mlc-muted',
  interrupted: 'mlc-muted'
};

export function StatusBadge(props: { status: string | null | undefined }): JSX.Element {
  const status = props.status || 'unknown';
  return (
    <span className={`mlc-Badge ${STATUS_CLASS[status] || 'mlc-muted'}`}>{status}</span>
  );
}

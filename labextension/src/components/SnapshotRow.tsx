import { caretDownIcon, caretRightIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ISnapshotSummary } from '../api';
import {
  basename,
  elapsed,
  formatAgo,
  formatDuration,
  formatSize,
  formatTime,
  isActive
} from '../format';
import { mapSummaryText } from '../maps';
import { SnapshotDetails } from './SnapshotDetails';
import { StatusBadge } from './StatusBadge';
import { ISidebarProps } from './types';

/** One snapshot: a summary line that opens its details. */
export function SnapshotRow({
  snapshot: s,
  model,
  app
}: ISidebarProps & { snapshot: ISnapshotSummary }): JSX.Element {
  const [open, setOpen] = React.useState(false);
  const row = React.useRef<HTMLLIElement>(null);
  // Asked for from a running run or a service: open, and into view.
  const focus = model.focus;
  React.useEffect(() => {
    if (focus?.id === s.id) {
      setOpen(true);
      row.current?.scrollIntoView?.({ block: 'nearest' });
    }
  }, [focus, s.id]);
  const Caret = open ? caretDownIcon : caretRightIcon;
  return (
    <li ref={row} className={`mlc-Row ${open ? 'mlc-open' : ''}`} data-snapshot={s.id}>
      <button
        className="mlc-RowMain mlc-RowToggle"
        aria-expanded={open}
        onClick={() => setOpen(!open)}
      >
        <Caret.react tag="span" className="mlc-Caret" />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name" title={s.id}>
              {s.name || s.id.slice(0, 12)}
            </span>
            <StatusBadge status={s.status} />
            <span className="mlc-When" title={formatTime(s.created)}>
              {formatAgo(s.created)}
            </span>
          </div>
          <div className="mlc-RowMeta" title={s.notebook || ''}>
            {basename(s.notebook)} ·{' '}
            {isActive(s.status)
              ? `${s.status} for ${formatDuration(elapsed(s.created))}`
              : formatDuration(s.duration)}
            {s.image_size !== null && s.image_size !== undefined
              ? ` · ${formatSize(s.image_size)}`
              : ''}
          </div>
          {s.map && (
            <div className="mlc-RowMeta mlc-MapTag" title={`--map ${s.map.name ?? ''}`}>
              {mapSummaryText(s.map)}
            </div>
          )}
        </div>
      </button>
      {open && <SnapshotDetails summary={s} model={model} app={app} />}
    </li>
  );
}

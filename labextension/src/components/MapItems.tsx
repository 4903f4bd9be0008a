import * as React from 'react';

import { moreText, plural, truncate } from '../format';
import {
  errorLines,
  failedItemTitle,
  IMapItem,
  itemCounts,
  itemFacts,
  itemTone,
  mapItems
} from '../maps';

/** Items shown one by one (a map may have thousands); failed ones are listed apart. */
const SHOWN_ITEMS = 120;
const SHOWN_FAILED = 20;

/** A map's items: a compact grid (index, status colour, duration, attempts), then each item
 * that failed with the last line of its traceback, opened to show all of it. */
export function MapItems({
  record
}: {
  record: { readonly [key: string]: unknown };
}): JSX.Element | null {
  const items = mapItems(record);
  if (items.length === 0) {
    return null;
  }
  const block = record.map as { name?: unknown; parallel?: unknown; retries?: unknown };
  const settings = [
    typeof block.name === 'string' ? `over ${block.name}` : '',
    typeof block.parallel === 'number' ? `parallel ${block.parallel}` : '',
    typeof block.retries === 'number' && block.retries > 0
      ? `retries ${block.retries}`
      : ''
  ].filter(Boolean);
  const failed = items.filter(i => i.reason !== 'done');
  const grid = truncate(items, SHOWN_ITEMS);
  const failedShown = truncate(failed, SHOWN_FAILED);
  return (
    <div className="mlc-Map">
      <h4 className="mlc-SubTitle">Items ({items.length})</h4>
      <div className="mlc-MapSummary">
        {itemCounts(items)}
        {settings.length ? ` · ${settings.join(' · ')}` : ''}
      </div>
      <ol className="mlc-MapGrid" aria-label="Items">
        {grid.shown.map(item => (
          <ItemCell key={item.index} item={item} />
        ))}
      </ol>
      {grid.more > 0 && <div className="mlc-Hint">{moreText(grid.more)}</div>}
      {failed.length > 0 && (
        <>
          <h4 className="mlc-SubTitle">Failed ({plural(failed.length, 'item')})</h4>
          <ul className="mlc-MapFailed">
            {failedShown.shown.map(item => (
              <FailedItem key={item.index} item={item} />
            ))}
          </ul>
          {failedShown.more > 0 && (
            <div className="mlc-Hint">{moreText(failedShown.more)}</div>
          )}
        </>
      )}
    </div>
  );
}

function ItemCell({ item }: { item: IMapItem }): JSX.Element {
  const facts = itemFacts(item, true);
  return (
    <li
      className={`mlc-MapItem mlc-MapItem-${itemTone(item.reason)}`}
      data-item={item.index}
      title={`item ${item.index}: ${item.reason} · ${itemFacts(item)}`}
    >
      <span className={`mlc-Dot mlc-Dot-${itemTone(item.reason)}`} aria-hidden="true" />
      <span className="mlc-MapIndex">{item.index}</span>
      <span className="mlc-MapFacts">{facts}</span>
    </li>
  );
}

function FailedItem({ item }: { item: IMapItem }): JSX.Element {
  const { last, lines } = errorLines(item.error);
  return (
    <li className="mlc-MapFailedItem" data-item={item.index}>
      <details>
        <summary>
          <span className="mlc-MapFailedTitle">{failedItemTitle(item)}</span>
          {last && <span className="mlc-MapError">{last}</span>}
        </summary>
        {lines.length > 0 && lines.join('').trim() !== '' && (
          <pre className="mlc-Log mlc-MapTrace">{lines.join('\n')}</pre>
        )}
      </details>
    </li>
  );
}

import * as React from 'react';

import { ILineage } from '../api';
import { IGraphNode, layoutLineage, Measure, SIZES } from '../lineage';
import { STATUS_CLASS } from './StatusBadge';

function nodeTitle(n: IGraphNode): string {
  if (n.kind === 'notebook') {
    return 'Values from the notebook';
  }
  if (n.missing) {
    return `${n.key}: removed from the store`;
  }
  const step = n.step !== null ? `Step ${n.step}: ` : 'Took its values: ';
  return `${step}${n.label} (${n.key}), ${n.status || 'unknown'}`;
}

const FONT_CLASS = { name: 'mlc-GraphName', id: 'mlc-GraphId', label: 'mlc-GraphLabel' };

/**
 * Text widths in the theme's fonts, measured on a hidden element (the `probe`) once it is
 * in the page; undefined (the layout's estimate) until then, and where nothing is laid out
 * (jsdom).
 */
function useMeasure(probe: React.RefObject<HTMLSpanElement>): Measure | undefined {
  const [measure, setMeasure] = React.useState<Measure | undefined>(undefined);
  React.useLayoutEffect(() => {
    const el = probe.current;
    if (!el) {
      return;
    }
    const widths = new Map<string, number>();
    const m: Measure = (text, font) => {
      const key = `${font}:${text}`;
      let width = widths.get(key);
      if (width === undefined) {
        el.className = `mlc-GraphProbe ${FONT_CLASS[font]}`;
        el.textContent = text;
        width = el.getBoundingClientRect().width;
        el.textContent = '';
        widths.set(key, width);
      }
      return width;
    };
    if (m('mmmm', 'name') > 0) {
      setMeasure(() => m);
    }
  }, [probe]);
  return measure;
}

/**
 * A snapshot's lineage: steps as boxes coloured by status, values as arrows named by the
 * value, left to right in run order. A box opens that snapshot's details.
 */
export function LineageGraph({
  lineage,
  onOpen
}: {
  lineage: ILineage;
  onOpen: (id: string) => void;
}): JSX.Element {
  const probe = React.useRef<HTMLSpanElement>(null);
  const measure = useMeasure(probe);
  const layout = React.useMemo(
    () => layoutLineage(lineage, SIZES, measure),
    [lineage, measure]
  );
  const box = React.useRef<HTMLDivElement>(null);
  // The shown snapshot is the last step, or near it: keep it in view in a narrow sidebar.
  React.useEffect(() => {
    const selected = layout.nodes.find(n => n.selected);
    const el = box.current;
    if (selected && el && selected.x + selected.width > el.clientWidth) {
      el.scrollLeft = selected.x + selected.width - el.clientWidth + 8;
    }
  }, [layout]);
  return (
    <div className="mlc-Graph" ref={box}>
      <div
        className="mlc-GraphCanvas"
        style={{ width: layout.width, height: layout.height }}
      >
        <span ref={probe} className="mlc-GraphProbe" aria-hidden="true" />
        <svg
          className="mlc-GraphEdges"
          width={layout.width}
          height={layout.height}
          aria-hidden="true"
        >
          <defs>
            <marker
              id="mlc-arrow"
              viewBox="0 0 8 8"
              refX="8"
              refY="4"
              markerWidth="7"
              markerHeight="7"
              orient="auto"
            >
              <path d="M 0 0 L 8 4 L 0 8 z" className="mlc-GraphArrow" />
            </marker>
          </defs>
          {layout.edges.map(e => (
            <g
              key={`${e.from}>${e.to}`}
              className="mlc-GraphEdge"
              data-from={e.from}
              data-to={e.to}
            >
              <title>{e.title}</title>
              <path d={e.path} markerEnd="url(#mlc-arrow)" />
              <text
                className="mlc-GraphLabel"
                x={e.labelX}
                y={e.labelY}
                textAnchor="middle"
              >
                {e.label}
              </text>
            </g>
          ))}
        </svg>
        {layout.nodes.map(n => {
          const className = [
            'mlc-GraphNode',
            `mlc-GraphNode-${n.kind}`,
            n.kind === 'notebook' ? '' : STATUS_CLASS[n.status || ''] || 'mlc-muted',
            n.selected ? 'mlc-selected' : '',
            n.missing ? 'mlc-missing' : ''
          ]
            .filter(Boolean)
            .join(' ');
          const style = { left: n.x, top: n.y, width: n.width, height: n.height };
          const content = (
            <>
              <span className="mlc-GraphName">{n.label}</span>
              {n.kind !== 'notebook' && (
                <span className="mlc-GraphId">
                  {n.step !== null ? `${n.step} · ` : ''}
                  {n.shortId}
                </span>
              )}
            </>
          );
          return n.kind === 'notebook' || n.missing ? (
            <div
              key={n.key}
              className={className}
              style={style}
              title={nodeTitle(n)}
              data-node={n.key}
            >
              {content}
            </div>
          ) : (
            <button
              key={n.key}
              className={className}
              style={style}
              title={nodeTitle(n)}
              data-node={n.key}
              aria-current={n.selected ? 'true' : undefined}
              onClick={() => onOpen(n.key)}
            >
              {content}
            </button>
          );
        })}
      </div>
    </div>
  );
}

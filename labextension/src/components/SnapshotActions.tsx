import * as React from 'react';

export interface ISnapshotActionsProps {
  /** The environment image's tag, if one was recorded. */
  image: string | null | undefined;
  /** The notebook's path under the server root, if it is there. */
  notebookPath: string | null | undefined;
  onRerun: () => void;
  onExport: () => void;
  onCopyTag: () => void;
  onOpenNotebook: () => void;
  onDelete: () => void;
}

/** The buttons of an opened snapshot. */
export function SnapshotActions(props: ISnapshotActionsProps): JSX.Element {
  const { image, notebookPath } = props;
  return (
    <div className="mlc-Actions">
      <button className="mlc-Button" onClick={props.onRerun}>
        Re-run
      </button>
      <button className="mlc-Button" onClick={props.onExport}>
        Export
      </button>
      <button
        className="mlc-Button"
        disabled={!image}
        onClick={props.onCopyTag}
        title={image || 'No image recorded'}
      >
        Copy image tag
      </button>
      <button
        className="mlc-Button"
        disabled={!notebookPath}
        onClick={props.onOpenNotebook}
        title={
          notebookPath
            ? `Open ${notebookPath}`
            : 'The notebook is outside the server root'
        }
      >
        Open notebook
      </button>
      <button className="mlc-Button mlc-Button-danger" onClick={props.onDelete}>
        Delete
      </button>
    </div>
  );
}

/**
 * Stand-ins for @jupyterlab/apputils (ES modules for webpack): notifications, the clipboard
 * and dialogs are recorded in `ui`, and a dialog answers `ui.dialogAnswer`.
 */
export const ui = {
  notifications: [] as [string, string][],
  copied: [] as string[],
  dialogs: [] as { title: string; body: string }[],
  dialogAnswer: true,
  reset(): void {
    this.notifications = [];
    this.copied = [];
    this.dialogs = [];
    this.dialogAnswer = true;
  }
};

export const Notification = {
  success: (message: string, options?: unknown): void => {
    ui.notifications.push(['success', message]);
  },
  error: (message: string, options?: unknown): void => {
    ui.notifications.push(['error', message]);
  }
};

export const Clipboard = {
  copyToSystem: (text: string): void => {
    ui.copied.push(text);
  }
};

export const Dialog = {
  cancelButton: () => ({ label: 'Cancel', accept: false }),
  warnButton: (options: { label: string }) => ({ ...options, accept: true })
};

export async function showDialog(options: {
  title: string;
  body: string;
}): Promise<{ button: { accept: boolean } }> {
  ui.dialogs.push({ title: options.title, body: options.body });
  return { button: { accept: ui.dialogAnswer } };
}

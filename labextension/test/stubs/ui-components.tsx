/**
 * Stand-ins for the parts of @jupyterlab/ui-components the sidebar uses: the real package
 * is ES modules with CSS for webpack. Icons render as a tag with their name as a class.
 */
import * as React from 'react';

interface IIconProps {
  tag?: 'div' | 'span';
  className?: string;
}

export class LabIcon {
  readonly name: string;
  readonly react: (props: IIconProps) => JSX.Element;

  constructor(options: { name: string; svgstr: string }) {
    this.name = options.name;
    const name = this.name;
    this.react = function StubIcon(props: IIconProps) {
      return React.createElement(props.tag ?? 'div', {
        className: [props.className, `icon-${name}`].filter(Boolean).join(' ')
      });
    };
  }
}

export const refreshIcon = new LabIcon({ name: 'ui-components:refresh', svgstr: '' });
export const caretDownIcon = new LabIcon({
  name: 'ui-components:caret-down',
  svgstr: ''
});
export const caretRightIcon = new LabIcon({
  name: 'ui-components:caret-right',
  svgstr: ''
});

/** Just enough of a Lumino widget for MlcSidebar: it is rendered with `render()`. */
export class ReactWidget {
  id = '';
  title: { icon?: unknown; caption?: string } = {};
  isDisposed = false;
  isVisible = false;
  readonly classes: string[] = [];
  updates = 0;

  addClass(name: string): void {
    this.classes.push(name);
  }

  update(): void {
    this.updates += 1;
  }

  dispose(): void {
    this.isDisposed = true;
  }

  protected onAfterShow(msg: unknown): void {}
  protected onAfterHide(msg: unknown): void {}
  protected onAfterAttach(msg: unknown): void {}
  protected onBeforeDetach(msg: unknown): void {}
}

import { LabIcon } from '@jupyterlab/ui-components';

/** A shipping container on a stand: the sidebar's tab icon. Themed through jp-icon3. */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M2 6.5 12 2l10 4.5v11L12 22 2 17.5zm2 1.3v8.4l7 3.2v-8.4zm9 3.2v8.4l7-3.2V7.8zm-1-1.7 6.9-3.1L12 3.1 5.1 6.2z"/>
    <path d="M6 10.2l1.3.6v5.6L6 15.8zm2.8 1.3 1.3.6v5.6l-1.3-.6z"/>
  </g>
</svg>`;

export const containerIcon = new LabIcon({
  name: 'mlcontainer-magics:container',
  svgstr
});

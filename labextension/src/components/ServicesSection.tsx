import * as React from 'react';

import { ServiceRow } from './ServiceRow';
import { ISidebarProps } from './types';

/** The cells serving over HTTP now; hidden while there are none. */
export function ServicesSection({ model, app }: ISidebarProps): JSX.Element | null {
  if (model.services.length === 0 && !model.servicesError) {
    return null;
  }
  return (
    <section className="mlc-Section" aria-label="Services">
      <h3 className="mlc-SectionTitle">
        Services <span className="mlc-Count">{model.services.length}</span>
      </h3>
      {model.servicesError && (
        <div className="mlc-Hint mlc-bad-text">{model.servicesError}</div>
      )}
      <ul className="mlc-List">
        {model.services.map(s => (
          <ServiceRow key={s.id} service={s} model={model} app={app} />
        ))}
      </ul>
    </section>
  );
}

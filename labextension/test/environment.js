/**
 * jsdom, plus Node's fetch classes that jsdom lacks: `ServerConnection.makeRequest` builds
 * a `Request` and calls the global `fetch`, which each test replaces with a fake server.
 */
const { TestEnvironment } = require('jest-environment-jsdom');

class JsdomWithFetch extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    for (const name of ['fetch', 'Request', 'Response', 'Headers']) {
      this.global[name] = globalThis[name];
    }
  }
}

module.exports = JsdomWithFetch;

/** Unit tests of the sidebar's model and formatters: ts-jest, in jsdom with Node's fetch. */
module.exports = {
  testEnvironment: '<rootDir>/test/environment.js',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts?(x)'],
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.test.json' }]
  },
  // JupyterLab's UI packages are ES modules meant for webpack: the view tests use stand-ins.
  moduleNameMapper: {
    '^@jupyterlab/(apputils|ui-components)$': '<rootDir>/test/stubs/$1.tsx'
  }
};

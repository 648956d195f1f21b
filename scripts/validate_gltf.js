#!/usr/bin/env node
// Validate a .glb/.gltf file with Khronos' glTF-Validator (installed by scripts/setup.sh into
// .tools/gltf-validator). Prints one JSON object: numErrors, numWarnings, numInfos, numHints and
// the messages (code, severity, pointer, message). Exit code 0 when it ran (whatever it found),
// 2 when it could not run. External resources are refused: a .glb must be self-contained.
"use strict";
const fs = require("fs");
const path = require("path");

const here = path.resolve(__dirname, "..", ".tools", "gltf-validator", "node_modules", "gltf-validator");
let validator;
try {
  validator = require(here);
} catch (err) {
  process.stderr.write(`validate_gltf: ${here} is missing; run scripts/setup.sh (${err.message})\n`);
  process.exit(2);
}
const file = process.argv[2];
if (!file) {
  process.stderr.write("usage: node scripts/validate_gltf.js FILE.glb\n");
  process.exit(2);
}
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 200,
    externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri} refused`)),
  })
  .then((report) => {
    const issues = report.issues;
    process.stdout.write(JSON.stringify({
      validatorVersion: report.validatorVersion,
      numErrors: issues.numErrors,
      numWarnings: issues.numWarnings,
      numInfos: issues.numInfos,
      numHints: issues.numHints,
      messages: issues.messages.map((m) => ({code: m.code, severity: m.severity, pointer: m.pointer, message: m.message})),
      info: report.info || null,
    }) + "\n");
  })
  .catch((err) => {
    process.stderr.write(`validate_gltf: validator failed on ${file}: ${err}\n`);
    process.exit(2);
  });

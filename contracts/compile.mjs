#!/usr/bin/env node
// Compiles the Satscale contracts with solc-js (standard JSON) and writes one artifact per contract to artifacts/,
// and the test fixtures (third-party-style collections, fixtures/*.sol) to artifacts/fixtures/.
//
//   node compile.mjs           rebuild artifacts/*.json and artifacts/fixtures/*.json
//   node compile.mjs --check   rebuild in memory; exit 1 if a committed artifact differs from the sources
//
// Works from any directory: every path is resolved against this file's folder. Needs `npm ci` in contracts/ first.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.dirname(fileURLToPath(import.meta.url));
const NODE_MODULES = path.join(ROOT, "node_modules");
const ARTIFACTS = path.join(ROOT, "artifacts");

// Contract name -> source unit name (a path relative to contracts/) and the artifact's path under artifacts/.
const CONTRACTS = {
  ProvenanceRegistry: { unit: "src/ProvenanceRegistry.sol", artifact: "ProvenanceRegistry.json" },
  SatscaleCollection: { unit: "src/SatscaleCollection.sol", artifact: "SatscaleCollection.json" },
  // Test fixtures: collections written the way third parties write them, for the tests only. Satscale never
  // deploys them, so their artifacts stay out of artifacts/ itself (provenance.contracts loads them only from
  // artifacts/fixtures/).
  BaseURICollection: { unit: "fixtures/BaseURICollection.sol", artifact: "fixtures/BaseURICollection.json" },
  URIStorageCollection: { unit: "fixtures/URIStorageCollection.sol", artifact: "fixtures/URIStorageCollection.json" },
};
// Folders whose files a source may import by relative path (e.g. src/IERC7160.sol from src/SatscaleCollection.sol).
const LOCAL_FOLDERS = ["src", "fixtures"];

// Everything that changes the bytecode is fixed here and copied into each artifact.
// evmVersion: prague is the newest fork that both anvil 1.7.1 and py-evm (eth-tester's in-process chain, whose
// default VM is PragueVM) run; py-evm has no Osaka VM. bytecodeHash "none" leaves only the compiler version in
// the CBOR trailer, so the output does not change with comments, paths or whitespace in the metadata.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "prague",
  metadata: { bytecodeHash: "none" },
};

function fail(message) {
  console.error(`compile.mjs: ${message}`);
  process.exit(1);
}

if (!existsSync(path.join(NODE_MODULES, "solc"))) {
  fail(`solc is not installed in ${NODE_MODULES}: run \`npm ci\` in contracts/ first`);
}
const solc = createRequire(import.meta.url)("solc");

const sha256 = (text) => createHash("sha256").update(text).digest("hex");

// Resolves `@openzeppelin/...` imports from contracts/node_modules and relative imports of our own files from
// LOCAL_FOLDERS (solc hands those over as source unit names such as "src/IERC7160.sol"), and refuses anything else
// so that a source can never pull in a file from outside this folder and the pinned dependencies.
function findImports(importPath) {
  const local = LOCAL_FOLDERS.find((folder) => importPath.startsWith(`${folder}/`));
  if (local) {
    const base = path.join(ROOT, local);
    const file = path.resolve(ROOT, importPath);
    if (!file.startsWith(base + path.sep)) return { error: `import escapes contracts/${local}: ${importPath}` };
    if (!existsSync(file)) return { error: `not found: ${file}` };
    return { contents: readFileSync(file, "utf8") };
  }
  if (!importPath.startsWith("@openzeppelin/contracts/")) {
    const allowed = ["@openzeppelin/contracts", ...LOCAL_FOLDERS].map((folder) => `${folder}/...`).join(", ");
    return { error: `import not allowed: ${importPath} (only ${allowed})` };
  }
  const base = path.join(NODE_MODULES, "@openzeppelin", "contracts");
  const file = path.resolve(NODE_MODULES, importPath);
  if (!file.startsWith(base + path.sep)) return { error: `import escapes @openzeppelin/contracts: ${importPath}` };
  if (!existsSync(file)) return { error: `not found: ${file} (run \`npm ci\` in contracts/)` };
  return { contents: readFileSync(file, "utf8") };
}

function compile() {
  const sources = {};
  for (const { unit } of Object.values(CONTRACTS)) {
    sources[unit] = { content: readFileSync(path.join(ROOT, unit), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: {
      ...SETTINGS,
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  const problems = output.errors ?? [];
  for (const problem of problems) console.error(problem.formattedMessage ?? problem.message);
  if (problems.some((p) => p.severity === "error")) fail("compilation failed");

  const version = solc.version();
  const artifacts = {};
  for (const [name, { unit, artifact: file }] of Object.entries(CONTRACTS)) {
    const contract = output.contracts?.[unit]?.[name];
    if (!contract) fail(`no output for ${name} in ${unit}`);
    const artifact = {
      contractName: name,
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
      deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
      compiler: { version, settings: SETTINGS },
      sourceName: unit,
      sourceSha256: sha256(sources[unit].content),
    };
    artifacts[file] = `${JSON.stringify(artifact, null, 2)}\n`;
  }
  return artifacts;
}

const args = process.argv.slice(2);
const unknown = args.filter((a) => a !== "--check");
if (unknown.length) fail(`unknown argument(s): ${unknown.join(" ")} (usage: node compile.mjs [--check])`);

const artifacts = compile();

if (args.includes("--check")) {
  const stale = [];
  for (const [file, text] of Object.entries(artifacts)) {
    const target = path.join(ARTIFACTS, file);
    if (!existsSync(target)) stale.push(`${path.relative(ROOT, target)} (missing)`);
    else if (readFileSync(target, "utf8") !== text) stale.push(path.relative(ROOT, target));
  }
  if (stale.length) {
    for (const s of stale) console.error(`compile.mjs: stale artifact: contracts/${s}`);
    fail("artifacts do not match the sources: run `node compile.mjs` in contracts/ and commit artifacts/");
  }
  console.log(`compile.mjs: ${Object.keys(artifacts).length} artifacts match the sources (solc ${solc.version()})`);
} else {
  for (const [file, text] of Object.entries(artifacts)) {
    mkdirSync(path.dirname(path.join(ARTIFACTS, file)), { recursive: true });
    writeFileSync(path.join(ARTIFACTS, file), text);
    console.log(`compile.mjs: wrote contracts/artifacts/${file}`);
  }
}

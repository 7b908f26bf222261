// Parses LogQL and TraceQL expressions with Grafana's own grammars (the Lezer parsers its query
// editors use) and reports every expression the grammar does not accept.
//
// Input, on stdin, one JSON object per line:
//   {"lang": "logql" | "traceql", "expr": "...", "where": "what the expression belongs to"}
// Output: one report per failing expression (where, the expression, the error position) on
// stdout, then a summary line. Exit status 1 if any expression failed (or a line was not
// understood), 0 otherwise.
//
// Grafana template variables are not part of either language: Grafana replaces them before the
// query leaves the browser. They are replaced here by plausible literals first, by two rules:
//   1. the variables in VARIABLES below, wherever they stand, by the literal given there;
//   2. any other variable inside a quoted string ("..." or `...`) by the word `value`
//      (`"$service"` → `"value"`, `"${__span.spanId}"` → `"value"`).
// Any other variable outside quotes is reported as a failure: add it to VARIABLES with a literal
// of the right kind (a duration, a number, a label name).
// Variable syntaxes recognised: `$name`, `${name}`, `${name:format}`, `${a.b.c}`.

import { createInterface } from "node:readline";
import { parser as logql } from "@grafana/lezer-logql";
import { parser as traceql } from "@grafana/lezer-traceql";

const PARSERS = { logql, traceql };

// Rule 1: variables with a literal of their own, by name (without `$`, braces or format).
const VARIABLES = {
  __interval: "1m",
  __rate_interval: "1m",
  __range: "1m",
  __auto: "1m",
  __interval_ms: "60000",
  __range_ms: "60000",
  __range_s: "60",
  // Trace to logs / profiles: the span's tags as label matchers.
  __tags: 'service_name="checkout"',
};

// A quoted string (LogQL and TraceQL strings, LogQL backtick strings) or a variable.
const TOKEN = /"(?:[^"\\]|\\.)*"|`[^`]*`|\$\{[^}]*\}|\$\w+/g;
const VARIABLE = /\$\{([^}]*)\}|\$(\w+)/g;

/** The variable's name: `$x` → x, `${x}` → x, `${x:csv}` → x. */
function variableName(braced, bare) {
  return braced !== undefined ? braced.split(":")[0] : bare;
}

/** Returns [the expression with variables replaced, the names of unknown unquoted variables]. */
function substitute(expr) {
  const unknown = [];
  const out = expr.replace(TOKEN, (token) => {
    if (token.startsWith('"') || token.startsWith("`")) {
      return token.replace(VARIABLE, (_, braced, bare) => {
        const name = variableName(braced, bare);
        return VARIABLES[name] !== undefined ? VARIABLES[name] : "value";
      });
    }
    const m = /^\$\{([^}]*)\}$|^\$(\w+)$/.exec(token);
    const name = variableName(m[1], m[2]);
    if (VARIABLES[name] !== undefined) return VARIABLES[name];
    unknown.push(token);
    return token;
  });
  return [out, unknown];
}

/** Offsets of the error nodes in the parse tree of `text`. */
function errorPositions(parser, text) {
  const positions = [];
  parser.parse(text).iterate({
    enter(node) {
      if (node.type.isError) positions.push(node.from);
    },
  });
  return positions;
}

function report(where, expr, message) {
  console.log(`FAIL ${where}\n  expression: ${expr}\n  ${message.replaceAll("\n", "\n  ")}`);
}

let checked = 0;
let failed = 0;
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (line.trim() === "") continue;
  let item;
  try {
    item = JSON.parse(line);
  } catch (e) {
    failed++;
    report("(input)", line, `not a JSON line: ${e.message}`);
    continue;
  }
  const { lang, expr, where = "(no where)" } = item;
  const parser = PARSERS[lang];
  if (parser === undefined || typeof expr !== "string") {
    failed++;
    report(where, String(expr), `need "lang" (logql or traceql) and "expr" (a string), got lang ${JSON.stringify(lang)}`);
    continue;
  }
  checked++;
  const [text, unknown] = substitute(expr);
  if (unknown.length > 0) {
    failed++;
    report(where, expr, `unknown template variable outside quotes: ${unknown.join(", ")} (add it to VARIABLES in check-queries.mjs)`);
    continue;
  }
  const errors = errorPositions(parser, text);
  if (errors.length > 0) {
    failed++;
    const at = errors[0];
    report(
      where,
      expr,
      `${lang} parse error at offset ${at} of the substituted expression` +
        (errors.length > 1 ? ` (${errors.length} error nodes)` : "") +
        `:\n${text}\n${" ".repeat(at)}^`,
    );
  }
}
console.log(`${checked} expressions checked, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);

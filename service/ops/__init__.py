"""Operations tools: replay commands, re-publish events, rebuild state, the DLQ, send and tail.

Each tool is a plain async function returning a summary; service.entrypoints.ops parses
the command line and prints. Every tool is safe to run twice and while the service runs."""

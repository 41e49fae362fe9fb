"""One module per `p2p bench` suite (registered in p2p.specs.suites): `add_arguments(parser)`
declares its flags, `run(args, out) -> int` runs it, shows its lines and tables through `out`
(p2p.bench.suite_io.SuiteOutput) and writes its --json. The measuring is in p2p.bench."""

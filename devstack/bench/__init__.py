"""`make bench`: how close imgpipe runs to what the hardware allows (issue 8).

`python -m devstack.bench [--quick] [--json PATH] [--profile]` runs, in one invocation:

1. codec: imgpipe's `compress()` vs a bare simplejpeg decode+encode loop, one core;
2. end to end: images/s from Submit to terminal state vs the bare loop on as many processes;
3. scaling: 1 processor vs N;
4. Submit latency for 1,000- and 10,000-row CSVs;
5. dispatch: ingest CPU seconds per image;
6. watchers: 1,000 WatchStatus streams on one ingest, its events all at once and paced;
   10,000 over two ingest replicas;
7. memory: processor peak RSS with its pool full of large images;
8. output: bytes out / bytes in, PSNR and SSIM at quality 50;

then prints a table (median, min, max of several runs, and how much CPU other processes
on the machine took meanwhile) and writes JSON (default `var/bench/latest.json`).

Modules: `cli` (the run, in order), `config` (default and quick sizes), `corpus`, `codec`
(the variants, run in spawned worker processes), `offline` (sections 1, 1b, 8 and the bare
loop), `harness` (PostgreSQL databases, stacks, gRPC clients, a gated image server, a
parked processor), `pipeline` (2, 3, 5, 7), `frontdoor` (4, 6), `figures` (results, table),
`procstat` (/proc), `machine`, `profiling` (`--profile`: py-spy).
"""

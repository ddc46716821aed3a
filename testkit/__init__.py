"""What the tests and the benchmarks run against: loopback fakes for fault injection, the
launchers of the real counterparts (Apache Kafka, the reference PDS and PLC directory) and the
harness that starts the service. Not part of the installed package."""

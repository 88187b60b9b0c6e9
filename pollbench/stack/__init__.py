"""The processes pollbench starts and watches: nginx (config, build), the backends, the load
generator's command line, process supervision, sampling, loopback HTTP helpers."""

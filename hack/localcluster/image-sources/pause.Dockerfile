# The pod sandbox image of the local nodes' containerd: pause.c, compiled static by images.py.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]

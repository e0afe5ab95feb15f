# A small image for test pods (sh, wget, nc, nslookup, ...): Debian's static busybox, copied by images.py.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -m 1777 /tmp"]
CMD ["/bin/sh"]

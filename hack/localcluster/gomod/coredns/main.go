// Command coredns is CoreDNS with only the plugins the local cluster's Corefile uses (coredns.py): bind, errors,
// cache and kubernetes. The release's own main imports every plugin, the cloud providers' DNS SDKs among them,
// which is most of its build time.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func main() {
	coremain.Run()
}

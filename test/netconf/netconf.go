// Package netconf holds the network configurations that the end-to-end
// tests, the demo and cnibench share, so that each exercises exactly what
// operators deploy.
package netconf

// DCOS is DC/OS's stock "dcos" network config, verbatim: no cniVersion (a
// 0.1.0 result) and no ipam.dataDir (the store is /var/lib/cni/networks/dcos,
// which callers redirect, e.g. with sandbox.CNITool's StateDir).
const DCOS = `{
  "name": "dcos",
  "type": "bridge",
  "bridge": "m-dcos",
  "isGateway": true,
  "ipMasq": false,
  "mtu": 1420,
  "ipam": {
    "type": "host-local",
    "subnet": "9.0.1.0/25",
    "routes": [{ "dst": "0.0.0.0/0" }]
  }
}`

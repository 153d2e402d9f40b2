package vmenv

import (
	"bytes"
	"text/template"
)

// AgentPort is the virtio-serial port name of the guest agent (CONTRACT.md).
const AgentPort = "org.vmpersona.agent.0"

// Domain describes a TCG libvirt domain booting a kernel directly, with one
// raw virtio disk, the agent channel and a serial console log.
type Domain struct {
	Name      string
	MemoryMiB int
	VCPUs     int
	Kernel    string
	Initrd    string
	Cmdline   string
	// Features is the inner XML of <features>. ACPI gives the guest HPET
	// and a calibrated TSC: without it the kernel keeps time with jiffies,
	// which drift and jump under TCG (guest clocks minutes off, spurious
	// heartbeat timeouts).
	Features  string
	DiskCache string // "writeback", "unsafe"
	Disk      string
	Sock      string // the agent channel's host socket (libvirt binds it)
	Console   string
}

// The kernel and initramfs may live in root's cache: QEMU runs as root.
var domainXML = template.Must(template.New("domain").Funcs(template.FuncMap{"x": XMLEscape}).Parse(`<domain type='qemu'>
  <name>{{x .Name}}</name>
  <memory unit='MiB'>{{.MemoryMiB}}</memory>
  <vcpu>{{.VCPUs}}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{{x .Kernel}}</kernel>
    <initrd>{{x .Initrd}}</initrd>
    <cmdline>{{x .Cmdline}}</cmdline>
  </os>
  <features>{{.Features}}</features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='{{x .DiskCache}}'/>
      <source file='{{x .Disk}}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='{{x .Sock}}'/>
      <target type='virtio' name='{{x .Port}}'/>
    </channel>
    <serial type='file'>
      <source path='{{x .Console}}' append='on'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>
`))

// Port is the agent's virtio-serial port name, for the template.
func (Domain) Port() string { return AgentPort }

// XML renders the domain's libvirt XML.
func (d Domain) XML() ([]byte, error) {
	var b bytes.Buffer
	if err := domainXML.Execute(&b, d); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

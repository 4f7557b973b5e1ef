package deploy

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const kubeDir = "kubernetes"

// kustomizations are the directories an operator applies with kubectl
// apply -k.
var kustomizations = []string{"base", "migrate", "overlays/production", "overlays/sidecar"}

// serviceMonitor is the part of the Prometheus Operator's CRD the
// manifests use; decoding into it strictly refuses a misspelt field.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// kinds are the API types a manifest may be, by apiVersion and kind.
var kinds = map[string]func() any{
	"v1/ConfigMap":                                  func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                                     func() any { return &corev1.Secret{} },
	"v1/Service":                                    func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                             func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":                            func() any { return &appsv1.Deployment{} },
	"batch/v1/Job":                                  func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget":                 func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler":        func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"networking.k8s.io/v1/NetworkPolicy":            func() any { return &networkingv1.NetworkPolicy{} },
	"monitoring.coreos.com/v1/ServiceMonitor":       func() any { return &serviceMonitor{} },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return &kusttypes.Kustomization{} },
	"kustomize.config.k8s.io/v1alpha1/Component":    func() any { return &kusttypes.Kustomization{} },
}

var (
	yamlSeparator = regexp.MustCompile(`(?m)^---\s*$`)
	yamlComment   = regexp.MustCompile(`(?m)^\s*#.*$`)
)

// decodeStrict decodes every YAML document of raw into its API type:
// an unknown kind, an unknown or duplicated field is an error.
func decodeStrict(raw []byte) ([]any, error) {
	var out []any
	for i, doc := range yamlSeparator.Split(string(raw), -1) {
		if strings.TrimSpace(yamlComment.ReplaceAllString(doc, "")) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		newObj, ok := kinds[path.Join(tm.APIVersion, tm.Kind)]
		if !ok {
			return nil, fmt.Errorf("document %d: no API type known for %s %s", i+1, tm.APIVersion, tm.Kind)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

// TestManifestFilesDecodeStrictly decodes every YAML file under
// kubernetes/, patches and kustomizations included, into its API type, and
// wants every path a kustomization names to exist.
func TestManifestFilesDecodeStrictly(t *testing.T) {
	var files int
	err := filepath.WalkDir(kubeDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		files++
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		objs, err := decodeStrict(raw)
		if err != nil {
			t.Errorf("%s: %v", p, err)
		}
		for _, obj := range objs {
			if k, ok := obj.(*kusttypes.Kustomization); ok {
				checkKustomizationPaths(t, filepath.Dir(p), k)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 10 {
		t.Fatalf("found %d manifests under %s; the walker is broken", files, kubeDir)
	}
}

func checkKustomizationPaths(t *testing.T, dir string, k *kusttypes.Kustomization) {
	paths := append(slices.Clone(k.Resources), k.Components...)
	for _, p := range k.Patches {
		if p.Path != "" {
			paths = append(paths, p.Path)
		}
	}
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("%s/kustomization.yaml names %s: %v", dir, p, err)
		}
	}
}

// TestDecodeStrictRefusesUnknownFields pins that strictness: a misspelt
// field fails instead of vanishing.
func TestDecodeStrictRefusesUnknownFields(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nspec: {replica: 2}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nspec: {endpoints: [{prot: admin}]}\n",
		"apiVersion: v1\nkind: Pod\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("decodeStrict accepted %q", doc)
		}
	}
}

// rendered is one kustomization's output, by kind.
type rendered struct {
	dir         string
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	services    []*corev1.Service
	workloads   []workload
	pdbs        []*policyv1.PodDisruptionBudget
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	netpols     []*networkingv1.NetworkPolicy
	monitors    []*serviceMonitor
	deployments map[string]*appsv1.Deployment
}

// workload is a pod template and what owns it.
type workload struct {
	name string
	pod  *corev1.PodTemplateSpec
}

func render(t *testing.T, dir string) *rendered {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(kubeDir, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeStrict(out)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := &rendered{dir: dir, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, deployments: map[string]*appsv1.Deployment{}}
	for _, obj := range objs {
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Secret:
			r.secrets[o.Name] = o
		case *corev1.Service:
			r.services = append(r.services, o)
		case *appsv1.Deployment:
			r.deployments[o.Name] = o
			r.workloads = append(r.workloads, workload{"Deployment " + o.Name, &o.Spec.Template})
		case *batchv1.Job:
			r.workloads = append(r.workloads, workload{"Job " + o.Name, &o.Spec.Template})
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			r.hpas = append(r.hpas, o)
		case *networkingv1.NetworkPolicy:
			r.netpols = append(r.netpols, o)
		case *serviceMonitor:
			r.monitors = append(r.monitors, o)
		}
	}
	return r
}

// exampleSecrets are the Secrets secrets.example.yaml documents: the ones
// an operator creates, which no kustomization ships.
func exampleSecrets(t *testing.T) map[string]*corev1.Secret {
	raw, err := os.ReadFile(filepath.Join(kubeDir, "secrets.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeStrict(raw)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*corev1.Secret{}
	for _, obj := range objs {
		if s, ok := obj.(*corev1.Secret); ok {
			out[s.Name] = s
		}
	}
	return out
}

// TestKustomizationsCrossReference renders every kustomization and checks
// what the API server cannot: that the proxy is started with flags and
// settings the real CLI has, probes hit the admin listener's real
// endpoints on the port it listens on, the preStop sleep and drain finish
// within the grace period, Services, monitors and policies select pods
// and ports that exist, every Secret and ConfigMap named exists with the
// keys read, and the proxy runs locked down.
func TestKustomizationsCrossReference(t *testing.T) {
	cli := &cliFlags{bin: binary(t), byCommand: map[string]map[string]flagInfo{}}
	secrets := exampleSecrets(t)
	for _, dir := range kustomizations {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			r := render(t, dir)
			for name, s := range secrets {
				if _, ok := r.secrets[name]; !ok {
					r.secrets[name] = s
				}
			}
			if len(r.workloads) == 0 {
				t.Fatal("renders no workload")
			}
			var proxies int
			for _, w := range r.workloads {
				checkPodReferences(t, r, w)
				proxies += checkProxyContainers(t, r, cli, w)
			}
			if proxies == 0 {
				t.Error("renders no tenantproxy container")
			}
			checkSelectors(t, r)
		})
	}
}

// checkPodReferences checks what every container of w names: Secrets,
// ConfigMaps and their keys, volumes, and ports of its probes.
func checkPodReferences(t *testing.T, r *rendered, w workload) {
	spec := &w.pod.Spec
	volumes := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		volumes[v.Name] = v
		switch {
		case v.Secret != nil:
			checkKeys(t, w.name, "Secret", v.Secret.SecretName, secretKeys(r.secrets[v.Secret.SecretName]), itemKeys(v.Secret.Items))
		case v.ConfigMap != nil:
			checkKeys(t, w.name, "ConfigMap", v.ConfigMap.Name, configMapKeys(r.configMaps[v.ConfigMap.Name]), itemKeys(v.ConfigMap.Items))
		}
	}
	for _, c := range allContainers(spec) {
		for _, e := range c.Env {
			switch {
			case e.ValueFrom == nil:
			case e.ValueFrom.SecretKeyRef != nil:
				ref := e.ValueFrom.SecretKeyRef
				checkKeys(t, w.name, "Secret", ref.Name, secretKeys(r.secrets[ref.Name]), []string{ref.Key})
			case e.ValueFrom.ConfigMapKeyRef != nil:
				ref := e.ValueFrom.ConfigMapKeyRef
				checkKeys(t, w.name, "ConfigMap", ref.Name, configMapKeys(r.configMaps[ref.Name]), []string{ref.Key})
			}
		}
		for _, m := range c.VolumeMounts {
			if volumes[m.Name] == nil {
				t.Errorf("%s: container %s mounts volume %s, which the pod does not have", w.name, c.Name, m.Name)
			}
		}
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if p != nil && p.HTTPGet != nil && containerPort(c, p.HTTPGet.Port) == 0 {
				t.Errorf("%s: container %s probes port %s, which it does not declare", w.name, c.Name, p.HTTPGet.Port.String())
			}
		}
	}
}

func allContainers(spec *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range spec.InitContainers {
		out = append(out, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		out = append(out, &spec.Containers[i])
	}
	return out
}

// checkKeys wants the object named to exist (keys is nil when it does
// not) with every key in want.
func checkKeys(t *testing.T, where, kind, name string, keys map[string]bool, want []string) {
	if keys == nil {
		t.Errorf("%s: reads %s %q, which neither the kustomization nor secrets.example.yaml defines", where, kind, name)
		return
	}
	for _, k := range want {
		if !keys[k] {
			t.Errorf("%s: reads key %q of %s %q, which has no such key", where, k, kind, name)
		}
	}
}

func itemKeys(items []corev1.KeyToPath) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Key)
	}
	return out
}

func secretKeys(s *corev1.Secret) map[string]bool {
	if s == nil {
		return nil
	}
	keys := map[string]bool{}
	for k := range s.Data {
		keys[k] = true
	}
	for k := range s.StringData {
		keys[k] = true
	}
	return keys
}

func configMapKeys(cm *corev1.ConfigMap) map[string]bool {
	if cm == nil {
		return nil
	}
	keys := map[string]bool{}
	for k := range cm.Data {
		keys[k] = true
	}
	return keys
}

// containerPort resolves a named or numbered port of c; 0 when c does not
// declare it.
func containerPort(c *corev1.Container, port intstr.IntOrString) int32 {
	for _, p := range c.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return p.ContainerPort
		}
	}
	return 0
}

// checkSelectors wants every Service, PodDisruptionBudget and
// NetworkPolicy to select a workload's pods and name ports those pods
// declare, every autoscaler to target a Deployment of the render that
// leaves its replica count to it, and every ServiceMonitor to select a
// Service by a port name it has.
func checkSelectors(t *testing.T, r *rendered) {
	podsOf := func(sel labels.Selector) []*corev1.PodTemplateSpec {
		var out []*corev1.PodTemplateSpec
		for _, w := range r.workloads {
			if sel.Matches(labels.Set(w.pod.Labels)) {
				out = append(out, w.pod)
			}
		}
		return out
	}
	declares := func(pods []*corev1.PodTemplateSpec, port intstr.IntOrString) bool {
		return slices.ContainsFunc(pods, func(p *corev1.PodTemplateSpec) bool {
			return slices.ContainsFunc(allContainers(&p.Spec), func(c *corev1.Container) bool { return containerPort(c, port) != 0 })
		})
	}
	for _, s := range r.services {
		pods := podsOf(labels.SelectorFromSet(s.Spec.Selector))
		if len(pods) == 0 {
			t.Errorf("Service %s selects no pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			if !declares(pods, p.TargetPort) {
				t.Errorf("Service %s: targetPort %s is not a port of the pods it selects", s.Name, p.TargetPort.String())
			}
		}
	}
	for _, pdb := range r.pdbs {
		if len(podsOf(mustSelector(t, pdb.Spec.Selector))) == 0 {
			t.Errorf("PodDisruptionBudget %s selects no pods", pdb.Name)
		}
	}
	for _, np := range r.netpols {
		pods := podsOf(mustSelector(t, &np.Spec.PodSelector))
		if len(pods) == 0 {
			t.Errorf("NetworkPolicy %s selects no pods", np.Name)
		}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port != nil && !declares(pods, *p.Port) {
					t.Errorf("NetworkPolicy %s admits port %s, which its pods do not declare", np.Name, p.Port.String())
				}
			}
		}
	}
	for _, h := range r.hpas {
		d := r.deployments[h.Spec.ScaleTargetRef.Name]
		switch {
		case h.Spec.ScaleTargetRef.Kind != "Deployment" || d == nil:
			t.Errorf("HorizontalPodAutoscaler %s targets %s %s, not a Deployment here", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
		case d.Spec.Replicas != nil:
			t.Errorf("Deployment %s sets replicas, which every apply would reset under its autoscaler", d.Name)
		}
	}
	for _, m := range r.monitors {
		sel := mustSelector(t, &m.Spec.Selector)
		var ports []string
		for _, s := range r.services {
			if sel.Matches(labels.Set(s.Labels)) {
				for _, p := range s.Spec.Ports {
					ports = append(ports, p.Name)
				}
			}
		}
		for _, e := range m.Spec.Endpoints {
			if !slices.Contains(ports, e.Port) {
				t.Errorf("ServiceMonitor %s scrapes port %q; the Services it selects have %v", m.Name, e.Port, ports)
			}
		}
	}
}

func mustSelector(t *testing.T, s *metav1.LabelSelector) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

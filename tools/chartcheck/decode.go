package chartcheck

import (
	"fmt"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
)

// scheme knows every type the chart may render, and nothing else: an object of any other
// kind fails to decode.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strict is the API server's strict field validation done on the client: unknown and
// duplicate fields are errors, not silently dropped.
var strict = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
	json.SerializerOptions{Yaml: true, Strict: true})

// Decode decodes m strictly into its Go type (*appsv1.Deployment, *monitoringv1.ServiceMonitor,
// ...). Unknown or duplicate fields, wrong types and unregistered kinds are errors.
func Decode(m Manifest) (runtime.Object, error) {
	obj, gvk, err := strict.Decode([]byte(m.YAML), nil, nil)
	if err != nil {
		return nil, fmt.Errorf("%s (%s/%s): %w", m.Template, m.Kind, m.Name, err)
	}
	if gvk.Kind != m.Kind {
		return nil, fmt.Errorf("%s: decoded %s, the manifest says %s", m.Template, gvk.Kind, m.Kind)
	}
	return obj, nil
}

// Objects are the rendered objects of one value set, decoded, by type.
type Objects struct {
	Deployments     []*appsv1.Deployment
	StatefulSets    []*appsv1.StatefulSet
	Services        []*corev1.Service
	ServiceAccounts []*corev1.ServiceAccount
	Secrets         []*corev1.Secret
	ConfigMaps      []*corev1.ConfigMap
	ServiceMonitors []*monitoringv1.ServiceMonitor
	PodMonitors     []*monitoringv1.PodMonitor
	PrometheusRules []*monitoringv1.PrometheusRule
}

// DecodeAll decodes every manifest of r (see Decode).
func DecodeAll(r *Rendered) (*Objects, error) {
	o := &Objects{}
	for _, m := range r.Manifests {
		obj, err := Decode(m)
		if err != nil {
			return nil, err
		}
		switch v := obj.(type) {
		case *appsv1.Deployment:
			o.Deployments = append(o.Deployments, v)
		case *appsv1.StatefulSet:
			o.StatefulSets = append(o.StatefulSets, v)
		case *corev1.Service:
			o.Services = append(o.Services, v)
		case *corev1.ServiceAccount:
			o.ServiceAccounts = append(o.ServiceAccounts, v)
		case *corev1.Secret:
			o.Secrets = append(o.Secrets, v)
		case *corev1.ConfigMap:
			o.ConfigMaps = append(o.ConfigMaps, v)
		case *monitoringv1.ServiceMonitor:
			o.ServiceMonitors = append(o.ServiceMonitors, v)
		case *monitoringv1.PodMonitor:
			o.PodMonitors = append(o.PodMonitors, v)
		case *monitoringv1.PrometheusRule:
			o.PrometheusRules = append(o.PrometheusRules, v)
		default:
			return nil, fmt.Errorf("%s: %s/%s is a type chartcheck does not check", m.Template, m.Kind, m.Name)
		}
	}
	return o, nil
}

// PodSpec returns the exporter's pod template, from the Deployment or the StatefulSet.
func (o *Objects) PodSpec() (*corev1.PodTemplateSpec, error) {
	switch {
	case len(o.Deployments) == 1 && len(o.StatefulSets) == 0:
		return &o.Deployments[0].Spec.Template, nil
	case len(o.StatefulSets) == 1 && len(o.Deployments) == 0:
		return &o.StatefulSets[0].Spec.Template, nil
	}
	return nil, fmt.Errorf("want one Deployment or one StatefulSet, got %d and %d", len(o.Deployments), len(o.StatefulSets))
}

// ConfigMap returns the ConfigMap named name, or nil.
func (o *Objects) ConfigMap(name string) *corev1.ConfigMap {
	for _, c := range o.ConfigMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

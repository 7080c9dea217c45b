// Command knative-check runs Knative's own admission code on manifests, offline.
//
// For every object in the YAML files given (multi-document), it does what the Knative Serving
// and Eventing webhooks of release 1.18 do on `kubectl apply` of a new object: decode it into
// its Go type, then SetDefaults(ctx) and Validate(ctx) with the configuration the webhooks put
// in the context, here the defaults a fresh install ships (serving-core.yaml's and
// eventing-core.yaml's ConfigMaps). It prints one line per object and exits 0 when every object
// passes, 1 with Knative's messages when any is rejected, 2 when a file cannot be read or holds
// a kind it does not know.
//
// What it does not do (it would need an API server): the optional dry-run pod creation of
// serving's validation callback (features.kubernetes.podspec-dryrun, "allowed" by default, so
// only for Services that opt in with an annotation), the CRD OpenAPI schema (tests/test_knative.py
// checks that), and anything that reads other objects (namespaces' ConfigMaps, referenced sinks).
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"knative.dev/pkg/apis"
	"knative.dev/pkg/webhook/json"
	"knative.dev/pkg/webhook/resourcesemantics"
	"sigs.k8s.io/yaml"

	eventingconfig "knative.dev/eventing/pkg/apis/config"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/feature"
	flowsv1 "knative.dev/eventing/pkg/apis/flows/v1"
	channelconfig "knative.dev/eventing/pkg/apis/messaging/config"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	"knative.dev/eventing/pkg/apis/sinks"
	pingconfig "knative.dev/eventing/pkg/apis/sources/config"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"

	servingconfig "knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingv1beta1 "knative.dev/serving/pkg/apis/serving/v1beta1"
	autoscalerconfig "knative.dev/serving/pkg/autoscaler/config"
)

// The kinds a user applies, as registered by serving's cmd/webhook (types) and eventing's
// cmd/webhook (ourTypes), v1 versions only. Anything else is refused: a kind this program
// does not know is a kind it cannot vouch for.
var servingTypes = map[schema.GroupVersionKind]func() resourcesemantics.GenericCRD{
	servingv1.SchemeGroupVersion.WithKind("Service"):            func() resourcesemantics.GenericCRD { return &servingv1.Service{} },
	servingv1.SchemeGroupVersion.WithKind("Configuration"):      func() resourcesemantics.GenericCRD { return &servingv1.Configuration{} },
	servingv1.SchemeGroupVersion.WithKind("Route"):              func() resourcesemantics.GenericCRD { return &servingv1.Route{} },
	servingv1beta1.SchemeGroupVersion.WithKind("DomainMapping"): func() resourcesemantics.GenericCRD { return &servingv1beta1.DomainMapping{} },
}

var eventingTypes = map[schema.GroupVersionKind]func() resourcesemantics.GenericCRD{
	eventingv1.SchemeGroupVersion.WithKind("Broker"):         func() resourcesemantics.GenericCRD { return &eventingv1.Broker{} },
	eventingv1.SchemeGroupVersion.WithKind("Trigger"):        func() resourcesemantics.GenericCRD { return &eventingv1.Trigger{} },
	messagingv1.SchemeGroupVersion.WithKind("Channel"):       func() resourcesemantics.GenericCRD { return &messagingv1.Channel{} },
	messagingv1.SchemeGroupVersion.WithKind("Subscription"):  func() resourcesemantics.GenericCRD { return &messagingv1.Subscription{} },
	sourcesv1.SchemeGroupVersion.WithKind("ApiServerSource"): func() resourcesemantics.GenericCRD { return &sourcesv1.ApiServerSource{} },
	sourcesv1.SchemeGroupVersion.WithKind("PingSource"):      func() resourcesemantics.GenericCRD { return &sourcesv1.PingSource{} },
	sourcesv1.SchemeGroupVersion.WithKind("SinkBinding"):     func() resourcesemantics.GenericCRD { return &sourcesv1.SinkBinding{} },
	sourcesv1.SchemeGroupVersion.WithKind("ContainerSource"): func() resourcesemantics.GenericCRD { return &sourcesv1.ContainerSource{} },
	flowsv1.SchemeGroupVersion.WithKind("Parallel"):          func() resourcesemantics.GenericCRD { return &flowsv1.Parallel{} },
	flowsv1.SchemeGroupVersion.WithKind("Sequence"):          func() resourcesemantics.GenericCRD { return &flowsv1.Sequence{} },
}

// eventing-core.yaml's ConfigMaps as shipped (knative.dev/eventing config/core/configmaps/:
// default-broker.yaml, default-channel.yaml; features.yaml and default-pingsource.yaml set
// nothing that differs from the code's defaults).
const defaultBrokerConfig = `
clusterDefault:
  brokerClass: MTChannelBasedBroker
  apiVersion: v1
  kind: ConfigMap
  name: config-br-default-channel
  namespace: knative-eventing
  delivery:
    retry: 10
    backoffPolicy: exponential
    backoffDelay: PT0.2S
`

const defaultChannelConfig = `
clusterDefault:
  apiVersion: messaging.knative.dev/v1
  kind: InMemoryChannel
`

// servingContext is what serving's webhook (cmd/webhook: apisconfig.Store.ToContext) attaches:
// config-defaults, config-features and config-autoscaler, here with serving-core.yaml's
// contents (only `_example` keys, so the code's defaults).
func servingContext(ctx context.Context) (context.Context, error) {
	defaults, err := servingconfig.NewDefaultsConfigFromMap(nil)
	if err != nil {
		return nil, fmt.Errorf("config-defaults: %w", err)
	}
	features, err := servingconfig.NewFeaturesConfigFromMap(nil)
	if err != nil {
		return nil, fmt.Errorf("config-features: %w", err)
	}
	autoscaler, err := autoscalerconfig.NewConfigFromMap(nil)
	if err != nil {
		return nil, fmt.Errorf("config-autoscaler: %w", err)
	}
	return servingconfig.ToContext(ctx, &servingconfig.Config{
		Defaults: defaults, Features: features, Autoscaler: autoscaler,
	}), nil
}

// eventingContext is what eventing's validation webhook attaches (cmd/webhook
// NewValidationAdmissionController's ctxFunc): broker defaults, channel defaults, ping
// defaults, feature flags, and the sinks config (no Kubernetes client offline).
func eventingContext(ctx context.Context) (context.Context, error) {
	brokers, err := eventingconfig.NewDefaultsConfigFromMap(map[string]string{
		eventingconfig.BrokerDefaultsKey: defaultBrokerConfig,
	})
	if err != nil {
		return nil, fmt.Errorf("config-br-defaults: %w", err)
	}
	channels, err := channelconfig.NewChannelDefaultsConfigFromMap(map[string]string{
		channelconfig.ChannelDefaulterKey: defaultChannelConfig,
	})
	if err != nil {
		return nil, fmt.Errorf("default-ch-webhook: %w", err)
	}
	pings, err := pingconfig.NewPingDefaultsConfigFromMap(nil)
	if err != nil {
		return nil, fmt.Errorf("config-ping-defaults: %w", err)
	}
	flags, err := feature.NewFlagsConfigFromMap(nil)
	if err != nil {
		return nil, fmt.Errorf("config-features: %w", err)
	}
	ctx = eventingconfig.ToContext(ctx, &eventingconfig.Config{Defaults: brokers})
	ctx = pingconfig.ToContext(ctx, &pingconfig.Config{PingDefaults: pings})
	ctx = channelconfig.ToContext(ctx, &channelconfig.Config{ChannelDefaults: channels})
	ctx = feature.ToContext(ctx, flags)
	return sinks.WithConfig(ctx, &sinks.Config{}), nil
}

// object is one YAML document of a file.
type object struct {
	file  string
	index int
	json  []byte
	gvk   schema.GroupVersionKind
	name  string
}

func (o object) String() string {
	return fmt.Sprintf("%s#%d %s %s", o.file, o.index, o.gvk.Kind, o.name)
}

func readObjects(path string) ([]object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objects []object
	for index := 1; ; index++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objects, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, index, err)
		}
		raw, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, index, err)
		}
		if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 || string(trimmed) == "null" {
			continue // an empty document (comments only, or a trailing ---)
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, index, err)
		}
		gv, err := schema.ParseGroupVersion(meta.APIVersion)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: apiVersion %q: %w", path, index, meta.APIVersion, err)
		}
		objects = append(objects, object{
			file: path, index: index, json: raw, gvk: gv.WithKind(meta.Kind), name: meta.Metadata.Name,
		})
	}
}

// admit runs the defaulting webhook's SetDefaults, then the validating webhook's Validate, on
// a new object, as on `kubectl apply` of an object that does not exist yet. It returns the
// error-level result (nil when admitted) and any warnings.
func admit(ctx context.Context, o object, newObj func() resourcesemantics.GenericCRD) (*apis.FieldError, []string, error) {
	resource := newObj()
	// Strict, like eventing's webhooks and kubectl's default --validate=strict (server-side
	// field validation against the CRD schema): a misspelt field is an error, not dropped.
	if err := json.Decode(o.json, resource, true); err != nil {
		return nil, nil, fmt.Errorf("cannot decode: %w", err)
	}
	// The API server fills in the namespace from kubectl's context before the webhooks run.
	if meta, ok := resource.(interface {
		GetNamespace() string
		SetNamespace(string)
	}); ok && meta.GetNamespace() == "" {
		meta.SetNamespace("default")
	}
	ctx = apis.WithinCreate(ctx)
	ctx = apis.WithUserInfo(ctx, &authenticationv1.UserInfo{Username: "knative-check"})
	resource.SetDefaults(ctx)
	result := resource.Validate(ctx)
	var warnings []string
	if w := result.Filter(apis.WarningLevel); w != nil {
		for _, e := range w.WrappedErrors() {
			warnings = append(warnings, e.Error())
		}
	}
	return result.Filter(apis.ErrorLevel), warnings, nil
}

func main() {
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		fmt.Fprintln(os.Stderr, "usage: knative-check FILE.yaml...\n"+
			"Runs Knative 1.18's SetDefaults + Validate (the admission webhooks' checks) on every object.")
		os.Exit(2)
	}
	base := context.Background()
	sctx, err := servingContext(base)
	if err != nil {
		fmt.Fprintln(os.Stderr, "knative-check: serving defaults:", err)
		os.Exit(2)
	}
	ectx, err := eventingContext(base)
	if err != nil {
		fmt.Fprintln(os.Stderr, "knative-check: eventing defaults:", err)
		os.Exit(2)
	}

	status, checked := 0, 0
	for _, path := range os.Args[1:] {
		objects, err := readObjects(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "knative-check:", err)
			os.Exit(2)
		}
		for _, o := range objects {
			ctx, newObj := sctx, servingTypes[o.gvk]
			if newObj == nil {
				ctx, newObj = ectx, eventingTypes[o.gvk]
			}
			if newObj == nil {
				fmt.Printf("UNKNOWN %s: %s is not a Knative kind this checker knows\n", o, o.gvk)
				status = 2
				continue
			}
			checked++
			fieldErr, warnings, err := admit(ctx, o, newObj)
			for _, w := range warnings {
				fmt.Printf("WARN %s: %s\n", o, w)
			}
			switch {
			case err != nil:
				fmt.Printf("FAIL %s: %v\n", o, err)
				status = max(status, 1)
			case fieldErr != nil:
				fmt.Printf("FAIL %s:\n  %s\n", o, strings.ReplaceAll(fieldErr.Error(), "\n", "\n  "))
				status = max(status, 1)
			default:
				fmt.Printf("ok   %s\n", o)
			}
		}
	}
	if checked == 0 && status == 0 {
		fmt.Fprintln(os.Stderr, "knative-check: no objects in", strings.Join(os.Args[1:], " "))
		os.Exit(2)
	}
	os.Exit(status)
}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "smki-extract.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it contains the chart name. */}}
{{- define "smki-extract.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "smki-extract.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "smki-extract.labels" -}}
helm.sh/chart: {{ include "smki-extract.chart" . }}
{{ include "smki-extract.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smki-extract
{{- end }}

{{/* Selector labels (immutable on a StatefulSet: never add to them). */}}
{{- define "smki-extract.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smki-extract.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "smki-extract.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smki-extract.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {registry, repository, tag, digest}; tag defaults to appVersion. */}}
{{- define "smki-extract.imageRef" -}}
{{- $img := .image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- $tag := default .appVersion $img.tag | toString -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $repo $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end }}

{{/* Where the pod mounts things; the ConfigMap's paths and the volume mounts share these. */}}
{{- define "smki-extract.configDir" -}}/etc/smki-extract{{- end }}
{{- define "smki-extract.storePath" -}}/var/lib/smki-extract/store{{- end }}
{{- define "smki-extract.outputDir" -}}/var/lib/smki-extract/output{{- end }}
{{- define "smki-extract.kafkaTlsDir" -}}/etc/smki-extract/kafka-tls{{- end }}
{{- define "smki-extract.kafkaSecretsDir" -}}/etc/smki-extract/kafka-secrets{{- end }}

{{/* Secret librdkafka properties: never in the ConfigMap. */}}
{{- define "smki-extract.secretProperties" -}}
sasl.password ssl.key.password ssl.key.pem ssl.keystore.password sasl.oauthbearer.client.secret sasl.oauthbearer.config
{{- end }}

{{/* librdkafka properties as written to [kafka.properties]: kafka.properties plus the ones
     kafka.tls and kafka.sasl imply. Fails on a property the chart or the service owns. */}}
{{- define "smki-extract.kafkaProperties" -}}
{{- $k := .Values.kafka -}}
{{- $managed := list -}}
{{- if or $k.tls.enabled $k.sasl.enabled }}{{ $managed = append $managed "security.protocol" }}{{ end -}}
{{- if $k.tls.enabled }}{{ $managed = concat $managed (list "ssl.ca.location" "ssl.certificate.location" "ssl.key.location") }}{{ end -}}
{{- if $k.sasl.enabled }}{{ $managed = concat $managed (list "sasl.mechanism" "sasl.username") }}{{ end -}}
{{- $props := dict -}}
{{- range $key, $value := $k.properties }}
{{- if has $key (list "bootstrap.servers" "group.id" "enable.auto.commit") }}
{{- fail (printf "kafka.properties.%s: the service sets it; use kafka.bootstrapServers / kafka.groupId" $key) }}
{{- end }}
{{- if has $key (splitList " " (include "smki-extract.secretProperties" $)) }}
{{- fail (printf "kafka.properties.%s is a secret and would land in a ConfigMap; use kafka.sasl.passwordSecret / kafka.tls.keyPasswordSecret" $key) }}
{{- end }}
{{- if has $key $managed }}
{{- fail (printf "kafka.properties.%s is set by kafka.tls / kafka.sasl; remove it from kafka.properties" $key) }}
{{- end }}
{{- $_ := set $props $key (toString $value) }}
{{- end }}
{{- if and $k.tls.enabled $k.sasl.enabled }}
{{- $_ := set $props "security.protocol" "SASL_SSL" }}
{{- else if $k.tls.enabled }}
{{- $_ := set $props "security.protocol" "SSL" }}
{{- else if $k.sasl.enabled }}
{{- $_ := set $props "security.protocol" "SASL_PLAINTEXT" }}
{{- end }}
{{- if $k.tls.enabled }}
{{- $dir := include "smki-extract.kafkaTlsDir" . }}
{{- if $k.tls.caSecret.name }}
{{- $_ := set $props "ssl.ca.location" (printf "%s/ca/%s" $dir $k.tls.caSecret.key) }}
{{- end }}
{{- if $k.tls.clientSecret.name }}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/client/%s" $dir $k.tls.clientSecret.certKey) }}
{{- $_ := set $props "ssl.key.location" (printf "%s/client/%s" $dir $k.tls.clientSecret.keyKey) }}
{{- end }}
{{- end }}
{{- if $k.sasl.enabled }}
{{- $_ := set $props "sasl.mechanism" $k.sasl.mechanism }}
{{- $_ := set $props "sasl.username" $k.sasl.username }}
{{- end }}
{{- toJson $props }}
{{- end }}

{{/*
The pod template shared by every workload: the StatefulSet (embedded store on a PVC),
the Deployment (ScyllaDB, or the embedded store on an emptyDir for trials), and in
distributed mode the endpoint and processor Deployments. Takes
(dict "root" $ "component" C): C is "" in embedded mode, else "endpoint" or
"processor" - the pods' app.kubernetes.io/component and their MF_MODE (the check-config
init container checks the config in that mode too). A processor pod has no MQTT ports
(it runs no endpoint); both get the MQTT TLS mount when TLS is on, since `meterflow
check` wants the [mqtt.tls] files in every mode. Resources: the component's
(meterflow.componentValues).

How meterflow.toml reaches the process: the ConfigMap holds every non-secret setting
(meterflow.toml), the Secret holds the [[tenants]] tables (tenants.toml). The
`render-config` init container concatenates the two into /run/meterflow, an in-memory
emptyDir private to the pod; meterflow reads that file read-only. The
ScyllaDB credentials and the Redis URL (which may carry a password) do not go
through the file: they are MF_SCYLLA_USERNAME, MF_SCYLLA_PASSWORD and MF_CACHE,
from the same Secret. In distributed mode, the Kafka SASL password (Secret key
kafka-sasl-password, optional) reaches render-config as an environment variable and is
appended, TOML-escaped, to [kafka.properties] - the ConfigMap's last table - as
"sasl.password"; meterflow itself never sees it in its environment.
*/}}
{{- define "meterflow.podTemplate" -}}
{{- $component := .component }}
{{- $values := include "meterflow.componentValues" . | fromYaml }}
{{- $ctx := . }}
{{- with .root -}}
metadata:
  annotations:
    checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- if not .Values.existingSecret }}
    checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "meterflow.labels" . | nindent 4 }}
    {{- with $component }}
    app.kubernetes.io/component: {{ . }}
    {{- end }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  serviceAccountName: {{ include "meterflow.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  initContainers:
    - name: render-config
      image: {{ printf "%s:%s" .Values.configRender.image.repository .Values.configRender.image.tag | quote }}
      imagePullPolicy: {{ .Values.configRender.image.pullPolicy }}
      command:
        - sh
        - -ec
        - |
          umask 077
          {{- if $component }}
          cat /etc/meterflow/config/meterflow.toml > /run/meterflow/meterflow.toml
          # The Kafka SASL password into [kafka.properties] (the ConfigMap's last table).
          if [ -n "${KAFKA_SASL_PASSWORD:-}" ]; then
            case "$KAFKA_SASL_PASSWORD" in
              *[[:cntrl:]]*)
                echo "render-config: the Secret's kafka-sasl-password holds a control character (a trailing newline?); refused" >&2
                exit 1 ;;
            esac
            escaped=$(printf '%s' "$KAFKA_SASL_PASSWORD" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
            printf '"sasl.password" = "%s"\n' "$escaped" >> /run/meterflow/meterflow.toml
          fi
          cat /etc/meterflow/secret/tenants.toml >> /run/meterflow/meterflow.toml
          {{- else }}
          cat /etc/meterflow/config/meterflow.toml /etc/meterflow/secret/tenants.toml \
            > /run/meterflow/meterflow.toml
          {{- end }}
      {{- if $component }}
      env:
        - name: KAFKA_SASL_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "meterflow.secretName" . }}
              key: kafka-sasl-password
              optional: true
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.configRender.resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/meterflow/config
          readOnly: true
        - name: secret
          mountPath: /etc/meterflow/secret
          readOnly: true
        - name: rendered-config
          mountPath: /run/meterflow
    # `meterflow check` on the rendered file, with the main container's image, env,
    # mounts and securityContext: a config meterflow would refuse fails the pod here,
    # before meterflow starts, with the errors in this container's log
    # (kubectl logs <pod> -c check-config).
    - name: check-config
      image: {{ include "meterflow.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        {{- toYaml .Values.command | nindent 8 }}
      args:
        - check
        - --config
        - /run/meterflow/meterflow.toml
      {{- with include "meterflow.containerEnv" $ctx | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      {{- include "meterflow.containerMounts" . | trim | nindent 6 }}
  containers:
    - name: meterflow
      image: {{ include "meterflow.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        {{- toYaml .Values.command | nindent 8 }}
      args:
        - run
        - --config
        - /run/meterflow/meterflow.toml
        {{- with .Values.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with include "meterflow.containerEnv" $ctx | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      ports:
        {{- if ne $component "processor" }}
        - name: mqtt
          containerPort: {{ .Values.ports.mqtt }}
          protocol: TCP
        {{- if .Values.mqtt.tls.enabled }}
        - name: mqtts
          containerPort: {{ .Values.ports.mqtts }}
          protocol: TCP
        {{- end }}
        {{- end }}
        - name: http
          containerPort: {{ .Values.ports.http }}
          protocol: TCP
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.lifecycle }}
      lifecycle:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      {{- include "meterflow.containerMounts" . | trim | nindent 6 }}
  volumes:
    - name: config
      configMap:
        name: {{ include "meterflow.fullname" . }}
    - name: secret
      secret:
        secretName: {{ include "meterflow.secretName" . }}
        defaultMode: 0440
        items:
          - key: tenants.toml
            path: tenants.toml
    - name: rendered-config
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- if .Values.mqtt.tls.enabled }}
    # meterflow's MQTT TLS certificate and key (kubernetes.io/tls), read at start.
    - name: mqtt-tls
      secret:
        secretName: {{ .Values.mqtt.tls.existingSecret }}
        defaultMode: 0440
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    {{- end }}
    {{- if not (include "meterflow.statefulset" .) }}
    - name: data
      emptyDir: {}
    {{- else if .Values.store.persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.store.persistence.existingClaim }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  {{- $constraints := list }}
  {{- range . }}
  {{- $c := deepCopy . }}
  {{- if not (hasKey $c "labelSelector") }}
  {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "meterflow.componentSelectorLabels" $ctx | fromYaml)) }}
  {{- end }}
  {{- $constraints = append $constraints $c }}
  {{- end }}
  topologySpreadConstraints:
    {{- toYaml $constraints | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}


{{/*
The env of the meterflow container and of its check-config init container. Takes
(dict "root" $ "component" C); C sets MF_MODE.
*/}}
{{- define "meterflow.containerEnv" -}}
{{- $component := .component }}
{{- with .root -}}
{{- if or $component (eq .Values.store.kind "scylla") (eq .Values.cache.kind "redis") .Values.extraEnv }}
env:
  {{- with $component }}
  # Distributed mode: what this workload runs (meterflow --mode).
  - name: MF_MODE
    value: {{ . }}
  {{- end }}
  {{- if eq .Values.store.kind "scylla" }}
  - name: MF_SCYLLA_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ include "meterflow.secretName" . }}
        key: scylla-username
        optional: true
  - name: MF_SCYLLA_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "meterflow.secretName" . }}
        key: scylla-password
        optional: true
  {{- end }}
  {{- if eq .Values.cache.kind "redis" }}
  # cache.backend = the Redis URL, kept in the Secret (it may hold a password).
  - name: MF_CACHE
    valueFrom:
      secretKeyRef:
        name: {{ include "meterflow.secretName" . }}
        key: redis-url
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The volumeMounts of the meterflow container and of its check-config init container. */}}
{{- define "meterflow.containerMounts" -}}
volumeMounts:
  - name: rendered-config
    mountPath: /run/meterflow
    readOnly: true
  - name: data
    mountPath: {{ .Values.store.persistence.mountPath }}
  - name: tmp
    mountPath: /tmp
  {{- if .Values.mqtt.tls.enabled }}
  - name: mqtt-tls
    mountPath: {{ include "meterflow.tlsDir" . }}
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{#- Rows of a database source changed in the watermark range (:after, :upto], oldest first.
    Tombstoned rows are deletions (ehr_deletions.sql), never loaded.
    Rendered by mipflow.node.ingest.database; every name is already quoted for the source's dialect. -#}
SELECT src.*
FROM {{ relation }} AS src
WHERE {{ watermark }} <= :upto
{%- if has_after %}
  AND {{ watermark }} > :after
{%- endif %}
{%- if tombstone %}
  AND COALESCE({{ tombstone }}, FALSE) = FALSE
{%- endif %}
ORDER BY {{ watermark }}

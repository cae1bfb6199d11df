FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . && useradd --system outbox
USER outbox
CMD ["outbox", "relay"]

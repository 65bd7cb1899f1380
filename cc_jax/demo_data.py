"""A small multilingual parallel instruction dataset with checkable answers, written for cc_jax.

Each record has a non-English instruction, its English translation, a short response in
the instruction's language and the bare answer (for exact scoring). Tasks: addition,
subtraction, multiplication, hours-to-minutes conversion. Regenerate the shipped files with

    python -m cc_jax.demo_data --out_dir=cc_jax/assets

The text is this project's own and shares its licence.
"""

from __future__ import annotations

import json
import pathlib
import random

ASSETS = pathlib.Path(__file__).parent / "assets"
TRAIN_FILE = ASSETS / "demo_train.jsonl"
TEST_FILE = ASSETS / "demo_test.jsonl"

# task -> language -> question template. {a}, {b} are the operands.
QUESTIONS = {
    "add": {
        "en": "What is {a} plus {b}? Answer with a number.",
        "zh": "{a}加{b}等于多少？请用数字回答。",
        "ar": "كم يساوي {a} زائد {b}؟ أجب برقم.",
        "hi": "{a} और {b} का योग क्या है? संख्या में उत्तर दें।",
        "ru": "Сколько будет {a} плюс {b}? Ответьте числом.",
        "sw": "{a} jumlisha {b} ni ngapi? Jibu kwa namba.",
        "fr": "Combien font {a} plus {b} ? Répondez par un nombre.",
    },
    "subtract": {
        "en": "What is {a} minus {b}? Answer with a number.",
        "zh": "{a}减{b}等于多少？请用数字回答。",
        "ar": "كم يساوي {a} ناقص {b}؟ أجب برقم.",
        "hi": "{a} में से {b} घटाने पर कितना बचता है? संख्या में उत्तर दें।",
        "ru": "Сколько будет {a} минус {b}? Ответьте числом.",
        "sw": "{a} kutoa {b} ni ngapi? Jibu kwa namba.",
        "fr": "Combien font {a} moins {b} ? Répondez par un nombre.",
    },
    "multiply": {
        "en": "What is {a} times {b}? Answer with a number.",
        "zh": "{a}乘以{b}等于多少？请用数字回答。",
        "ar": "كم يساوي {a} ضرب {b}؟ أجب برقم.",
        "hi": "{a} गुणा {b} कितना होता है? संख्या में उत्तर दें।",
        "ru": "Сколько будет {a} умножить на {b}? Ответьте числом.",
        "sw": "{a} zidisha {b} ni ngapi? Jibu kwa namba.",
        "fr": "Combien font {a} fois {b} ? Répondez par un nombre.",
    },
    "minutes": {
        "en": "How many minutes are there in {a} hours? Answer with a number.",
        "zh": "{a}小时有多少分钟？请用数字回答。",
        "ar": "كم دقيقة في {a} ساعات؟ أجب برقم.",
        "hi": "{a} घंटे में कितने मिनट होते हैं? संख्या में उत्तर दें।",
        "ru": "Сколько минут в {a} часах? Ответьте числом.",
        "sw": "Kuna dakika ngapi katika saa {a}? Jibu kwa namba.",
        "fr": "Combien de minutes y a-t-il dans {a} heures ? Répondez par un nombre.",
    },
}
ANSWERS = {
    "en": "The answer is {c}.",
    "zh": "答案是{c}。",
    "ar": "الجواب هو {c}.",
    "hi": "उत्तर {c} है।",
    "ru": "Ответ: {c}.",
    "sw": "Jibu ni {c}.",
    "fr": "La réponse est {c}.",
}
LANGUAGES = tuple(ANSWERS)


def _operands(task: str, rng: random.Random) -> tuple[int, int, int]:
  if task == "add":
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return a, b, a + b
  if task == "subtract":
    a = rng.randint(10, 90)
    b = rng.randint(1, a - 1)
    return a, b, a - b
  if task == "multiply":
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return a, b, a * b
  a = rng.randint(2, 12)
  return a, 0, a * 60


def make_records(per_language_and_task: int, seed: int) -> list[dict]:
  """Parallel records, every (language, task) pair `per_language_and_task` times."""
  rng = random.Random(seed)
  records = []
  for task, questions in QUESTIONS.items():
    for lang in LANGUAGES:
      for _ in range(per_language_and_task):
        a, b, c = _operands(task, rng)
        records.append({
            "instruction": questions[lang].format(a=a, b=b),
            "instruction_en": questions["en"].format(a=a, b=b),
            "output": ANSWERS[lang].format(c=c),
            "answer": str(c),
            "lang": lang,
            "task": task,
        })
  rng.shuffle(records)
  return records


def write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out_dir", default=str(ASSETS))
  parser.add_argument("--train_per_pair", type=int, default=10, help="records per (language, task), train")
  parser.add_argument("--test_per_pair", type=int, default=4, help="records per (language, task), test")
  args = parser.parse_args()
  out = pathlib.Path(args.out_dir)
  write_jsonl(out / TRAIN_FILE.name, make_records(args.train_per_pair, seed=0))
  write_jsonl(out / TEST_FILE.name, make_records(args.test_per_pair, seed=1))
  print(f"wrote {out / TRAIN_FILE.name} and {out / TEST_FILE.name}")


if __name__ == "__main__":
  main()

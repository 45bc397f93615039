"""Build PrecisionOps' committed text corpora under assets/corpora/, deterministically.

- calib-en-short.jsonl: ~256 short English paragraphs (<= 128 tokens) from the stdlib
  documentation in the reference model's *train* split: the calibration corpus.
- eval-en.jsonl: 128 samples from the *held-out* split: short and long English
  (256-1024 tokens) and Python source.
- traffic-multiscript.jsonl: 128 samples of the traffic that calibration never covers:
  long (many > 512 tokens, some > 2048) Chinese, Japanese, Russian, Arabic, Greek and
  Hindi text, and Python code commented in those languages.

The sentences of the multiscript corpus below were written for this project (nothing
can be downloaded here); samples are composed from them in a seeded order. The English
corpora come from the same documents and hash split as scripts/train_reference_model.py,
so they depend on the CPython version that runs this script (the committed files were
built under the one recorded in the model's training_log.json).

    python scripts/build_corpora.py [--out assets/corpora] [--tokenizer assets/models/pops-llama-tiny]

Each line is {"text": ..., "slice": ..., "tags": [...]}; token counts use the reference
model's tokenizer, `<s>` included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or by path
from train_reference_model import collect_documents, split_documents  # noqa: E402

CALIB_SAMPLES = 256
EVAL_COUNTS = {"en-short": 48, "en-long": 32, "code": 48}
SHORT_TOKENS = (16, 128)
LONG_TOKENS = (256, 1024)
CODE_TOKENS = (96, 1024)
LONG_TARGETS = [280, 360, 450, 560, 700, 900]
CODE_TARGETS = [140, 240, 380, 560, 800, 1000]
# Long traffic targets in tokens: each language gets every one of them.
TRAFFIC_LONG_TARGETS = [560, 700, 850, 1000, 1250, 1500, 1800, 2150, 2500, 2900]
TRAFFIC_SHORT_MAX_TOKENS = [96, 128, 160, 200, 256, 320]
MIXED_CODE_TARGETS = [200, 350, 600, 900, 1400]
SEED = 20251123

SCRIPTS = {  # language: (Unicode script name used in tags, joiner between sentences)
    "zh": ("Han", ""),
    "ja": ("Hiragana-Katakana-Han", ""),
    "ru": ("Cyrillic", " "),
    "ar": ("Arabic", " "),
    "el": ("Greek", " "),
    "hi": ("Devanagari", " "),
}

# Written for PrecisionOps: everyday sentences, grouped by topic, in six languages.
SENTENCES = {
    "zh": {
        "programming": [
            "这个函数读取配置文件，并返回一个包含所有设置的字典。",
            "如果列表为空，程序会抛出一个异常并记录错误信息。",
            "我们在周末重写了数据库的查询模块，速度提高了三倍。",
            "在提交代码之前，请先运行全部单元测试。",
            "这个变量的名字太短了，别人很难理解它的用途。",
            "服务器每隔五分钟检查一次磁盘空间。",
            "新版本的编译器修复了一个与浮点数舍入有关的错误。",
            "她写了一个小脚本，自动整理下载文件夹里的照片。",
            "学习一门新的编程语言，最好的办法是多写代码。",
        ],
        "weather": [
            "今天早上下了一场大雨，街上到处都是积水。",
            "天气预报说明天气温会降到零度以下。",
            "春天的时候，公园里的樱花全部开放了。",
            "北方的冬天又干又冷，南方的冬天却很潮湿。",
            "下午的风很大，我们只好取消了去海边的计划。",
            "夏天的夜晚很闷热，很多人在河边散步乘凉。",
        ],
        "cities": [
            "北京是中国的首都，也是一座有三千多年历史的城市。",
            "上海的外滩在晚上灯火通明，吸引了许多游客。",
            "成都以美食和悠闲的生活节奏而闻名。",
            "杭州的西湖四季都有不同的风景。",
            "这座小城的老街保存得很好，石板路已经有几百年了。",
            "广州是南方重要的贸易港口，每年都举办大型的商品交易会。",
        ],
        "history": [
            "长城最早修建于两千多年前，用来抵御北方的入侵。",
            "唐朝时期，长安是世界上最繁华的城市之一。",
            "造纸术和印刷术对世界文化的传播产生了深远的影响。",
            "明朝的郑和曾经七次率领船队远航到东南亚和非洲。",
            "丝绸之路连接了东方和西方，带来了商品，也带来了思想。",
            "博物馆里收藏着许多古代的青铜器和瓷器。",
        ],
        "food": [
            "我每天早上喝一杯热茶，再吃一碗面条。",
            "奶奶做的饺子特别好吃，全家人都喜欢。",
            "周末我们去市场买了新鲜的蔬菜和水果。",
            "这家小饭馆的菜又便宜又好吃，每天中午都排长队。",
            "这道菜放了很多辣椒，吃起来又香又辣。",
            "晚饭后我们一起吃了西瓜，一直聊到很晚。",
        ],
        "science": [
            "水在一百摄氏度时沸腾，在零度时结冰。",
            "月亮绕着地球转，地球又绕着太阳转。",
            "科学家们正在研究如何更有效地储存太阳能。",
            "大熊猫主要生活在四川的山区，以竹子为食。",
            "这台机器每秒钟可以完成数十亿次运算。",
        ],
    },
    "ja": {
        "programming": [
            "この関数は設定ファイルを読み込んで、辞書を返します。",
            "テストがすべて通ってから、変更をマージしてください。",
            "昨日、古いスクリプトを書き直したら、処理時間が半分になりました。",
            "エラーメッセージをよく読むと、原因がすぐにわかることが多いです。",
            "変数の名前はできるだけ分かりやすく付けましょう。",
            "サーバーのログを確認したところ、深夜にメモリ不足が発生していました。",
            "新しいライブラリを使う前に、ドキュメントを読んでおくと安心です。",
            "彼女は毎朝、コーヒーを飲みながらコードレビューをしています。",
            "新しいプログラミング言語を学ぶには、毎日少しずつ書くのが一番です。",
        ],
        "weather": [
            "今日は朝から雨が降っていて、少し肌寒いです。",
            "天気予報によると、週末は晴れて暖かくなるそうです。",
            "梅雨の季節になると、洗濯物がなかなか乾きません。",
            "台風が近づいているので、電車が止まるかもしれません。",
            "冬の北海道では、雪が一メートル以上積もることもあります。",
            "夏の夕方には、急に激しい雷雨が降ることがあります。",
        ],
        "cities": [
            "東京は世界でも有数の大都市で、交通網がとても発達しています。",
            "京都には千年以上の歴史を持つお寺や神社がたくさんあります。",
            "大阪の人は明るくて、食べ物にとてもこだわると言われています。",
            "札幌の雪まつりには、毎年多くの観光客が訪れます。",
            "奈良公園では、たくさんの鹿が自由に歩き回っています。",
            "横浜の港町には、古い洋館やおしゃれなカフェが並んでいます。",
        ],
        "history": [
            "江戸時代は二百六十年以上続き、比較的平和な時代でした。",
            "明治維新のあと、日本は急速に近代化を進めました。",
            "平安時代には、ひらがなを使った文学作品が多く書かれました。",
            "奈良の大仏は、八世紀に造られた巨大な仏像です。",
            "城下町には、今でも昔の町並みが残っているところがあります。",
            "歴史の授業で、戦国時代の武将について調べました。",
        ],
        "food": [
            "母が作る味噌汁は、いつも優しい味がします。",
            "駅前の小さなラーメン屋には、いつも行列ができています。",
            "お正月には、家族みんなでおせち料理を食べます。",
            "週末は友達と一緒に公園でお弁当を食べました。",
            "このパン屋のクロワッサンは、朝早く行かないと売り切れてしまいます。",
            "夕食のあと、みんなでスイカを食べながら話しました。",
        ],
        "science": [
            "水は百度で沸騰し、零度で凍ります。",
            "桜の花は、気温が上がると一斉に咲き始めます。",
            "研究者たちは、地震を早く予測する方法を探しています。",
            "月は地球の周りを約二十七日かけて一周します。",
            "このコンピューターは、一秒間に何十億回も計算できます。",
        ],
    },
    "ru": {
        "programming": [
            "Эта функция читает файл конфигурации и возвращает словарь с настройками.",
            "Перед тем как отправить изменения, обязательно запустите все тесты.",
            "Мы переписали модуль для работы с базой данных, и запросы стали выполняться втрое быстрее.",
            "Если список пуст, программа выбрасывает исключение и записывает сообщение в журнал.",
            "Хорошее имя переменной экономит время всем, кто будет читать код после вас.",
            "Сервер каждые пять минут проверяет, сколько свободного места осталось на диске.",
            "В новой версии компилятора исправлена ошибка, связанная с округлением чисел с плавающей точкой.",
            "Она написала небольшой скрипт, который сам сортирует фотографии по датам.",
            "Чтобы выучить новый язык программирования, нужно писать код каждый день.",
        ],
        "weather": [
            "Утром шёл сильный дождь, и на улицах появились огромные лужи.",
            "Синоптики обещают, что к выходным температура опустится ниже нуля.",
            "Весной в парке зацветает сирень, и воздух становится особенно свежим.",
            "Зимой в Сибири морозы иногда достигают сорока градусов.",
            "После обеда поднялся сильный ветер, и нам пришлось отменить прогулку на лодке.",
            "Летние ночи в Петербурге такие светлые, что можно читать без лампы.",
        ],
        "cities": [
            "Москва — столица России и один из самых больших городов Европы.",
            "Санкт-Петербург был основан Петром Первым в начале восемнадцатого века.",
            "Казань стоит на берегу Волги и славится своим древним кремлём.",
            "Владивосток находится на берегу Тихого океана, недалеко от границы с Китаем.",
            "В старом центре Новгорода сохранились церкви, которым почти тысяча лет.",
            "Через Екатеринбург проходит условная граница между Европой и Азией.",
        ],
        "history": [
            "Древние летописи рассказывают о событиях, происходивших более тысячи лет назад.",
            "В тысяча девятьсот шестьдесят первом году Юрий Гагарин первым из людей полетел в космос.",
            "Транссибирскую магистраль строили больше двадцати лет, и она соединила запад страны с Тихим океаном.",
            "Ломоносов основал Московский университет в середине восемнадцатого века.",
            "В музее хранятся старинные карты, рукописи и монеты.",
            "История этого города началась с маленькой деревни у переправы через реку.",
        ],
        "food": [
            "По воскресеньям бабушка печёт пироги с капустой и яблоками.",
            "На рынке мы купили свежие овощи, мёд и домашний сыр.",
            "Горячий борщ со сметаной особенно хорош в холодный вечер.",
            "Мы пили чай на веранде и разговаривали до самой ночи.",
            "Этот суп готовят с большим количеством укропа и чеснока.",
            "После ужина мы ели арбуз и говорили о планах на лето.",
        ],
        "science": [
            "Вода кипит при ста градусах и замерзает при нуле.",
            "Луна обращается вокруг Земли примерно за двадцать семь суток.",
            "Учёные изучают, как растения приспосабливаются к засухе.",
            "Байкал — самое глубокое озеро на планете, и вода в нём удивительно прозрачная.",
            "Этот компьютер выполняет миллиарды операций в секунду.",
        ],
    },
    "ar": {
        "programming": [
            "تقرأ هذه الدالة ملف الإعدادات وتعيد قاموسًا يحتوي على جميع القيم.",
            "قبل إرسال التعديلات، يجب تشغيل جميع الاختبارات والتأكد من نجاحها.",
            "أعدنا كتابة وحدة قاعدة البيانات، فأصبحت الاستعلامات أسرع بثلاث مرات.",
            "إذا كانت القائمة فارغة، يرفع البرنامج استثناءً ويسجل رسالة خطأ.",
            "الاسم الواضح للمتغير يوفر الوقت على كل من يقرأ الشيفرة بعدك.",
            "يفحص الخادم المساحة الفارغة على القرص كل خمس دقائق.",
            "أصلح الإصدار الجديد من المترجم خطأً يتعلق بتقريب الأعداد العشرية.",
            "كتبت برنامجًا صغيرًا يرتب الصور في مجلدات حسب تاريخ التقاطها.",
            "أفضل طريقة لتعلم لغة برمجة جديدة هي أن تكتب الشيفرة كل يوم.",
        ],
        "weather": [
            "هطلت أمطار غزيرة صباح اليوم وامتلأت الشوارع بالمياه.",
            "تقول النشرة الجوية إن درجات الحرارة ستنخفض في نهاية الأسبوع.",
            "في الصيف ترتفع الحرارة في الصحراء إلى أكثر من خمسين درجة.",
            "هبت رياح قوية بعد الظهر فألغينا رحلتنا إلى البحر.",
            "الربيع في هذه المدينة قصير، لكنه جميل ومليء بالأزهار.",
            "تتشكل العواصف الرملية عندما تحمل الرياح الغبار لمسافات طويلة.",
        ],
        "cities": [
            "القاهرة أكبر مدينة في العالم العربي، ويمر بها نهر النيل.",
            "دمشق من أقدم المدن المأهولة في العالم.",
            "في مراكش أسواق قديمة مليئة بالتوابل والسجاد والنحاس.",
            "بيروت مدينة ساحلية تشتهر بمطاعمها وحياتها الثقافية.",
            "تقع مدينة البتراء في الأردن، وقد نحتت مبانيها في الصخر الوردي.",
            "دبي مدينة حديثة نمت بسرعة كبيرة خلال العقود الأخيرة.",
        ],
        "history": [
            "كانت بغداد في العصر العباسي مركزًا عالميًا للعلم والترجمة.",
            "جمع العلماء في بيت الحكمة مكتبة ضخمة وترجموا فيها كتب اليونان والهند.",
            "يعد ابن خلدون من أوائل من كتبوا عن علم الاجتماع وفلسفة التاريخ.",
            "بنيت الأهرامات في مصر قبل أكثر من أربعة آلاف عام.",
            "استخدم التجار طريق الحرير لنقل البضائع بين الشرق والغرب.",
            "في المتحف الوطني مخطوطات قديمة وعملات من عصور مختلفة.",
        ],
        "food": [
            "نشرب القهوة العربية مع التمر عند استقبال الضيوف.",
            "تخبز جدتي أطيب خبز في الحي كل صباح.",
            "اشترينا من السوق خضارًا طازجة وزيت زيتون وجبنًا أبيض.",
            "يجتمع أفراد العائلة على مائدة الإفطار في شهر رمضان.",
            "يُطهى هذا الطبق بالأرز واللحم والكثير من البهارات.",
            "بعد العشاء أكلنا البطيخ وتحدثنا عن خطط الصيف.",
        ],
        "science": [
            "يغلي الماء عند مئة درجة مئوية ويتجمد عند الصفر.",
            "يدور القمر حول الأرض مرة كل سبعة وعشرين يومًا تقريبًا.",
            "يدرس العلماء طرقًا جديدة لتحلية مياه البحر بتكلفة أقل.",
            "يعيش الجمل في الصحراء ويستطيع أن يبقى أيامًا دون ماء.",
            "ينفذ هذا الحاسوب مليارات العمليات في الثانية الواحدة.",
        ],
    },
    "el": {
        "programming": [
            "Αυτή η συνάρτηση διαβάζει το αρχείο ρυθμίσεων και επιστρέφει ένα λεξικό.",
            "Πριν στείλετε τις αλλαγές σας, τρέξτε όλα τα τεστ.",
            "Ξαναγράψαμε το τμήμα της βάσης δεδομένων και τα ερωτήματα έγιναν τρεις φορές πιο γρήγορα.",
            "Αν η λίστα είναι άδεια, το πρόγραμμα εγείρει μια εξαίρεση και καταγράφει το σφάλμα.",
            "Ένα καλό όνομα μεταβλητής γλιτώνει χρόνο σε όποιον διαβάσει τον κώδικα.",
            "Ο διακομιστής ελέγχει τον ελεύθερο χώρο στον δίσκο κάθε πέντε λεπτά.",
            "Η νέα έκδοση του μεταγλωττιστή διορθώνει ένα σφάλμα στη στρογγυλοποίηση αριθμών.",
            "Έγραψε ένα μικρό σενάριο που ταξινομεί αυτόματα τις φωτογραφίες ανά ημερομηνία.",
            "Για να μάθεις μια νέα γλώσσα προγραμματισμού, γράφε κώδικα κάθε μέρα.",
        ],
        "weather": [
            "Σήμερα το πρωί έβρεξε δυνατά και οι δρόμοι γέμισαν νερά.",
            "Η πρόγνωση του καιρού λέει ότι το Σαββατοκύριακο θα έχει ήλιο.",
            "Το καλοκαίρι στα νησιά φυσάνε συχνά δυνατά μελτέμια.",
            "Τον χειμώνα στα βουνά της Ηπείρου χιονίζει πολύ.",
            "Το απόγευμα σηκώθηκε αέρας και ακυρώσαμε τη βόλτα με τη βάρκα.",
            "Την άνοιξη οι λόφοι γεμίζουν αγριολούλουδα.",
        ],
        "cities": [
            "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μία από τις αρχαιότερες πόλεις της Ευρώπης.",
            "Η Θεσσαλονίκη είναι γνωστή για τον Λευκό Πύργο και τα βυζαντινά της μνημεία.",
            "Στα Χανιά το παλιό λιμάνι είναι γεμάτο ταβέρνες και καφενεία.",
            "Η Κέρκυρα έχει έντονη ιταλική επιρροή στην αρχιτεκτονική της.",
            "Τα Ιωάννινα βρίσκονται δίπλα σε μια λίμνη με ένα μικρό νησί στη μέση.",
            "Το Ναύπλιο ήταν η πρώτη πρωτεύουσα του νεότερου ελληνικού κράτους.",
        ],
        "history": [
            "Ο Παρθενώνας χτίστηκε τον πέμπτο αιώνα π.Χ. προς τιμήν της θεάς Αθηνάς.",
            "Οι πρώτοι Ολυμπιακοί Αγώνες έγιναν στην αρχαία Ολυμπία.",
            "Ο Αριστοτέλης έγραψε για τη λογική, τη φυσική και την πολιτική.",
            "Η Βυζαντινή Αυτοκρατορία διήρκεσε περισσότερο από χίλια χρόνια.",
            "Στο μουσείο φυλάσσονται αγγεία, αγάλματα και αρχαία νομίσματα.",
            "Ο μηχανισμός των Αντικυθήρων θεωρείται ο αρχαιότερος γνωστός αναλογικός υπολογιστής.",
        ],
        "food": [
            "Η γιαγιά μου φτιάχνει την καλύτερη σπανακόπιτα του χωριού.",
            "Στη λαϊκή αγορά αγοράσαμε φρέσκες ντομάτες, ελιές και τυρί.",
            "Το βράδυ φάγαμε ψάρι στα κάρβουνα δίπλα στη θάλασσα.",
            "Πίνουμε ελληνικό καφέ και συζητάμε για ώρες.",
            "Αυτό το φαγητό μαγειρεύεται με πολύ ελαιόλαδο και ρίγανη.",
            "Μετά το δείπνο φάγαμε καρπούζι και μιλήσαμε για τα σχέδια του καλοκαιριού.",
        ],
        "science": [
            "Το νερό βράζει στους εκατό βαθμούς και παγώνει στο μηδέν.",
            "Η Σελήνη κάνει έναν γύρο γύρω από τη Γη σε περίπου είκοσι επτά ημέρες.",
            "Οι επιστήμονες μελετούν πώς οι ελιές αντέχουν την ξηρασία.",
            "Οι θαλάσσιες χελώνες γεννούν τα αυγά τους στις αμμουδιές της Ζακύνθου.",
            "Αυτός ο υπολογιστής εκτελεί δισεκατομμύρια πράξεις το δευτερόλεπτο.",
        ],
    },
    "hi": {
        "programming": [
            "यह फ़ंक्शन कॉन्फ़िगरेशन फ़ाइल पढ़ता है और सभी सेटिंग्स के साथ एक डिक्शनरी लौटाता है।",
            "बदलाव भेजने से पहले सभी टेस्ट ज़रूर चलाइए।",
            "हमने डेटाबेस वाला मॉड्यूल दोबारा लिखा और क्वेरी तीन गुना तेज़ हो गईं।",
            "अगर सूची खाली हो, तो प्रोग्राम एक अपवाद उठाता है और त्रुटि दर्ज करता है।",
            "वेरिएबल का साफ़ नाम कोड पढ़ने वाले हर व्यक्ति का समय बचाता है।",
            "सर्वर हर पाँच मिनट में डिस्क पर खाली जगह की जाँच करता है।",
            "कंपाइलर के नए संस्करण में दशमलव संख्याओं को गोल करने की एक गलती ठीक की गई है।",
            "उसने एक छोटी स्क्रिप्ट लिखी जो तस्वीरों को तारीख के हिसाब से अपने आप छाँटती है।",
            "नई प्रोग्रामिंग भाषा सीखने का सबसे अच्छा तरीका है रोज़ कोड लिखना।",
        ],
        "weather": [
            "आज सुबह तेज़ बारिश हुई और सड़कों पर पानी भर गया।",
            "मौसम विभाग के अनुसार इस सप्ताह के अंत में तापमान गिरेगा।",
            "मानसून जून में केरल पहुँचता है और फिर धीरे-धीरे उत्तर की ओर बढ़ता है।",
            "दिल्ली में मई और जून के महीनों में बहुत गर्मी पड़ती है।",
            "दोपहर के बाद तेज़ आँधी चली, इसलिए हमें नदी किनारे की सैर रद्द करनी पड़ी।",
            "पहाड़ों में सर्दियों के दौरान अक्सर बर्फ़ गिरती है।",
        ],
        "cities": [
            "दिल्ली भारत की राजधानी है और यहाँ कई ऐतिहासिक इमारतें हैं।",
            "मुंबई देश की आर्थिक राजधानी है और समुद्र के किनारे बसी है।",
            "वाराणसी गंगा के तट पर बसा दुनिया के सबसे पुराने शहरों में से एक है।",
            "जयपुर को उसकी गुलाबी इमारतों के कारण गुलाबी शहर कहा जाता है।",
            "बेंगलुरु में बहुत सी सॉफ़्टवेयर कंपनियाँ हैं।",
            "कोलकाता अपने पुस्तक मेलों और संगीत परंपरा के लिए प्रसिद्ध है।",
        ],
        "history": [
            "ताजमहल सत्रहवीं सदी में शाहजहाँ ने बनवाया था।",
            "सम्राट अशोक ने अपने संदेश पत्थर के स्तंभों पर खुदवाए थे।",
            "भारत को उन्नीस सौ सैंतालीस में स्वतंत्रता मिली।",
            "प्राचीन नालंदा विश्वविद्यालय में दूर-दूर से विद्यार्थी पढ़ने आते थे।",
            "संग्रहालय में पुराने सिक्के, मूर्तियाँ और पांडुलिपियाँ रखी हैं।",
            "शून्य की अवधारणा को गणित में भारतीय विद्वानों ने विकसित किया।",
        ],
        "food": [
            "मेरी दादी हर रविवार को आलू के पराठे बनाती हैं।",
            "बाज़ार से हमने ताज़ी सब्ज़ियाँ, आम और मसाले खरीदे।",
            "सर्दियों की शाम को गरम चाय के साथ पकौड़े बहुत अच्छे लगते हैं।",
            "त्योहारों पर पूरा परिवार एक साथ खाना खाता है।",
            "इस सब्ज़ी में बहुत सारी हरी मिर्च और धनिया डाला जाता है।",
            "रात के खाने के बाद हमने तरबूज़ खाया और गर्मियों की योजनाओं पर बात की।",
        ],
        "science": [
            "पानी सौ डिग्री सेल्सियस पर उबलता है और शून्य पर जम जाता है।",
            "चंद्रमा लगभग सत्ताईस दिनों में पृथ्वी का एक चक्कर लगाता है।",
            "वैज्ञानिक ऐसी फ़सलों पर शोध कर रहे हैं जो कम पानी में उग सकें।",
            "बंगाल टाइगर सुंदरबन के जंगलों में रहता है।",
            "यह कंप्यूटर एक सेकंड में अरबों गणनाएँ कर सकता है।",
        ],
    },
}

# Python snippets whose comments, docstrings and messages are filled with the sentences
# above: the code-mixed traffic of a multilingual team. `@N@` marks sentence slot N.
CODE_TEMPLATES = [
    '''def load_settings(path):
    """@0@"""
    # @1@
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    if not settings:
        # @2@
        raise ValueError("@3@")
    return settings
''',
    '''class DiskMonitor:
    """@0@"""

    def __init__(self, interval=300):
        # @1@
        self.interval = interval
        self.history = []

    def check(self, free_bytes):
        self.history.append(free_bytes)
        if free_bytes < 10 * 2**30:
            log.warning("@2@")
        return free_bytes
''',
    '''REPORTS = dict(
    morning="@0@",
    evening="@1@",
)


def forecast(period):
    # @2@
    return REPORTS.get(period, "@3@")
''',
    '''def test_sort_photos(tmp_path):
    """@0@"""
    # @1@
    for day in range(3):
        (tmp_path / f"IMG_{day:04d}.jpg").write_bytes(b"")
    result = sort_photos(tmp_path)
    assert len(result) == 3, "@2@"
''',
    '''async def fetch_city(session, name):
    # @0@
    async with session.get(f"/v1/cities/{name}") as response:
        if response.status != 200:
            raise LookupError("@1@")
        data = await response.json()
    # @2@
    return City(name=name, summary="@3@", population=data["population"])
''',
]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record(text: str, slice_: str, tags: list[str]) -> dict:
    return {"text": text, "slice": slice_, "tags": tags}


class TokenCounter:
    """Counts tokens as the runtime will see them: the reference tokenizer, `<s>` included."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        self.backend = AutoTokenizer.from_pretrained(folder).backend_tokenizer

    def __call__(self, text: str) -> int:
        return len(self.backend.encode(text).ids)


# --- English corpora from the stdlib documents -----------------------------------------


def prose_paragraphs(text: str) -> list[str]:
    """The English prose paragraphs of a docstring or pydoc topic, reflowed to one line.

    Code examples, doctests, tables and headings are dropped: a paragraph is prose when
    most lines start at the margin, it has at least 8 words, mostly letters, and it ends
    like a sentence.
    """
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or any(line.lstrip().startswith((">>>", "...", "$ ", "|", "+-")) for line in lines):
            continue
        if sum(line.startswith("   ") for line in lines) * 3 > len(lines):
            continue
        flat = " ".join(block.split())
        visible = [c for c in flat if not c.isspace()]
        letters = sum(c.isalpha() for c in visible)
        if len(flat.split()) < 8 or letters < 0.75 * len(visible) or not flat.endswith((".", ":", "!", "?", ")")):
            continue
        if re.search(r"(.)\1{4,}", flat):  # rules like ===== or -----
            continue
        found.append(flat)
    return found


def code_blocks(text: str) -> list[str]:
    """Source split at blank lines followed by a top-level or method-level line."""
    blocks, current = [], []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        starts_block = (
            current and i > 0 and not lines[i - 1].strip() and line.strip()
            and len(line) - len(line.lstrip()) <= 4
        )
        if starts_block:
            blocks.append("\n".join(current).strip("\n"))
            current = []
        current.append(line)
    if current:
        blocks.append("\n".join(current).strip("\n"))
    return [b for b in blocks if b.strip()]


def pack(pieces: list[str], joiner: str, targets: list[int], bounds: tuple[int, int], count) -> list[str]:
    """Join consecutive pieces into samples of about targets[i] tokens within `bounds`."""
    low, high = bounds
    samples, current, t = [], [], 0
    for piece in pieces:
        candidate = joiner.join([*current, piece])
        n = count(candidate)
        if n > high:
            if current and count(joiner.join(current)) >= low:
                samples.append(joiner.join(current))
                t += 1
            current = [piece] if count(piece) <= high else []
            continue
        current.append(piece)
        if n >= targets[t % len(targets)]:
            samples.append(candidate)
            current, t = [], t + 1
    if current and count(joiner.join(current)) >= low:
        samples.append(joiner.join(current))
    return samples


def pick(candidates: list[tuple[str, str]], n: int, per_doc: int, exclude=frozenset()) -> list[tuple[str, str]]:
    """Up to `n` (doc_id, text) pairs in hash order, at most `per_doc` from one document."""
    taken, per, seen = [], {}, set(exclude)
    for doc_id, text in sorted(candidates, key=lambda item: sha256(item[1])):
        if text in seen or per.get(doc_id, 0) >= per_doc:
            continue
        seen.add(text)
        per[doc_id] = per.get(doc_id, 0) + 1
        taken.append((doc_id, text))
        if len(taken) == n:
            break
    return taken


def short_candidates(docs, count) -> list[tuple[str, str]]:
    low, high = SHORT_TOKENS
    return [
        (doc.doc_id, par)
        for doc in docs if doc.kind == "prose"
        for par in prose_paragraphs(doc.text) if low <= count(par) <= high
    ]


def english_tags(doc_id: str) -> list[str]:
    return ["lang:en", "domain:python-docs", f"source:{doc_id}"]


def build_calibration(train_docs, count) -> list[dict]:
    """Short English paragraphs from the train split, two per document at most."""
    chosen = pick(short_candidates(train_docs, count), CALIB_SAMPLES, per_doc=2)
    return [record(text, "en-short", english_tags(doc_id)) for doc_id, text in chosen]


def train_pieces(train_docs) -> set[str]:
    """Every paragraph and code block of the train split.

    A held-out file can still repeat a train file's boilerplate (distutils copies one
    docstring paragraph into many commands); such pieces are kept out of eval samples.
    """
    pieces = set()
    for doc in train_docs:
        pieces.update(prose_paragraphs(doc.text) if doc.kind == "prose" else code_blocks(doc.text))
    return pieces


def build_eval(heldout_docs, count, exclude: set[str]) -> list[dict]:
    """Held-out English (short and long) and Python source samples, none of `exclude`."""
    short = pick(short_candidates(heldout_docs, count), EVAL_COUNTS["en-short"], per_doc=4, exclude=exclude)
    used = exclude | {text for _, text in short}
    long_candidates = [
        (doc.doc_id, text)
        for doc in heldout_docs if doc.kind == "prose"
        for text in pack([p for p in prose_paragraphs(doc.text) if p not in used], "\n\n",
                         LONG_TARGETS, LONG_TOKENS, count)
    ]
    long = pick(long_candidates, EVAL_COUNTS["en-long"], per_doc=4)
    code_candidates = [
        (doc.doc_id, text)
        for doc in heldout_docs if doc.kind == "code"
        for text in pack([b for b in code_blocks(doc.text) if b not in exclude], "\n\n",
                         CODE_TARGETS, CODE_TOKENS, count)
    ]
    code = pick(code_candidates, EVAL_COUNTS["code"], per_doc=2)
    rows = [record(t, "en-short", english_tags(d)) for d, t in short]
    rows += [record(t, "en-long", english_tags(d)) for d, t in long]
    rows += [record(t, "code", ["lang:python", "domain:python-source", f"source:{d}"]) for d, t in code]
    return rows


# --- multiscript traffic -----------------------------------------------------------------


class SentenceStream:
    """One language's sentences in a seeded order.

    Paragraphs keep to one topic, so long samples read as text rather than a shuffle;
    single sentences for code come from a queue reshuffled each time it runs out.
    """

    def __init__(self, lang: str, seed: int):
        self.topics = [list(topic) for topic in SENTENCES[lang].values()]
        self.rng = random.Random(f"{seed}:{lang}")
        self.topic_queue: list[list[str]] = []
        self.queue: list[str] = []

    def paragraph(self) -> list[str]:
        """The sentences of the next topic, shuffled."""
        if not self.topic_queue:
            self.topic_queue = [topic[:] for topic in self.topics]
            self.rng.shuffle(self.topic_queue)
        topic = self.topic_queue.pop()
        self.rng.shuffle(topic)
        return topic

    def next(self) -> str:
        if not self.queue:
            self.queue = [s for topic in self.topics for s in topic]
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def compose_text(lang: str, stream: SentenceStream, count, *, min_tokens=0, max_tokens=None) -> str:
    """Paragraphs of 3-6 same-topic sentences until `min_tokens`; or, with `max_tokens`,
    one paragraph of as many sentences (at least one) as fit."""
    joiner = SCRIPTS[lang][1]
    if max_tokens is not None:
        sentences = stream.paragraph()
        kept = sentences[:1]
        for sentence in sentences[1:]:
            if count(joiner.join([*kept, sentence])) > max_tokens:
                break
            kept.append(sentence)
        return joiner.join(kept)
    paragraphs = []
    while not paragraphs or count("\n\n".join(paragraphs)) < min_tokens:
        size = 3 + len(paragraphs) % 4  # 3, 4, 5, 6, 3, ...
        paragraphs.append(joiner.join(stream.paragraph()[:size]))
    return "\n\n".join(paragraphs)


def fill_template(template: str, stream: SentenceStream) -> str:
    text = template
    for slot in range(4):
        text = text.replace(f"@{slot}@", stream.next())
    return text


def compose_code(langs: list[str], streams: dict, count, target_tokens: int, offset: int) -> str:
    """Python snippets with comments in `langs`, in turn, until `target_tokens` and every
    language has had a snippet."""
    snippets, i = [], 0
    while True:
        template = CODE_TEMPLATES[(offset + i) % len(CODE_TEMPLATES)]
        snippets.append(fill_template(template, streams[langs[i % len(langs)]]))
        i += 1
        text = "\n\n".join(snippets)
        if i >= len(langs) and count(text) >= target_tokens:
            return text


def script_tags(lang: str) -> list[str]:
    return [f"lang:{lang}", f"script:{SCRIPTS[lang][0]}"]


def build_traffic(count, seed: int = SEED) -> list[dict]:
    """Long and short non-Latin text per language, then code commented in those languages."""
    streams = {lang: SentenceStream(lang, seed) for lang in SCRIPTS}
    rows = []
    for lang in SCRIPTS:
        for limit in TRAFFIC_SHORT_MAX_TOKENS:
            text = compose_text(lang, streams[lang], count, max_tokens=limit)
            rows.append(record(text, f"{lang}-short", [*script_tags(lang), "length:short"]))
        for target in TRAFFIC_LONG_TARGETS:
            text = compose_text(lang, streams[lang], count, min_tokens=target)
            rows.append(record(text, f"{lang}-long", [*script_tags(lang), "length:long"]))
    code_streams = {lang: SentenceStream(lang, seed + 1) for lang in SCRIPTS}
    for i, lang in enumerate(SCRIPTS):
        for j, target in enumerate(MIXED_CODE_TARGETS):
            text = compose_code([lang], code_streams, count, target, offset=i + j)
            length = "long" if target > 512 else "short"
            rows.append(record(text, "code-mixed", ["lang:python", *script_tags(lang), f"length:{length}"]))
    every = list(SCRIPTS)
    for j, target in enumerate((1200, 2400)):
        text = compose_code(every, code_streams, count, target, offset=j)
        tags = ["lang:python"] + [tag for lang in every for tag in script_tags(lang)] + ["length:long"]
        rows.append(record(text, "code-mixed", tags))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(body, encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/corpora"))
    parser.add_argument("--tokenizer", type=Path, default=Path("assets/models/pops-llama-tiny"))
    args = parser.parse_args(argv)
    count = TokenCounter(args.tokenizer)
    splits = split_documents(collect_documents())
    calib = build_calibration(splits["train"], count)
    corpora = {
        "calib-en-short.jsonl": calib,
        "eval-en.jsonl": build_eval(splits["heldout"], count, exclude=train_pieces(splits["train"])),
        "traffic-multiscript.jsonl": build_traffic(count),
    }
    for name, rows in corpora.items():
        write_jsonl(args.out / name, rows)
        slices = sorted({row["slice"] for row in rows})
        print(f"{name}: {len(rows)} samples, {(args.out / name).stat().st_size:,} bytes, slices {slices}")


if __name__ == "__main__":
    main()
